"""The learner's ranks (``learner_ranks > 1``): start them, drive them, stop them.

Rank 0 is the controller's process; it alone talks to generators, buffer, logs and checkpoints.
Ranks 1..N-1 are spawned here as local processes (:class:`LocalRanks`, ``runtime: local``), as
Ray actors in a placement group, possibly on other nodes (:class:`RayRanks`, ``runtime: ray``),
or started by ``torchrun`` (``asyncrl train`` under ``torchrun`` runs :func:`serve` on every rank
but 0). Each
holds a :class:`asyncrl.learner.Learner` over its shards of the one FSDP2 model
(:mod:`asyncrl.sharding`).

The seam: :class:`RankLeader` stands where the controller's learner stands. Each call that
computes or gathers (``step``, ``weights``, ``state_dict``, ``full_model_state``,
``load_state_dict``) is first announced to the other ranks (:class:`CallChannel`: a key in the
ranks' TCPStore, which never blocks rank 0, whatever state another rank is in), then made on rank
0's learner; the other ranks make the same call on theirs (:func:`serve`), so the collectives
inside match.

Failure: a rank that exits is noticed before the next call (local ranks) or inside the call's
collectives (the peer's sockets close); a rank that hangs holds a collective at most
``learner_timeout_s``. Either way the call raises :class:`asyncrl.errors.LearnerFailed` (one
line), the controller stops without a final checkpoint (the sharded state cannot be gathered)
and the periodic checkpoints stay as written. Followers exit when rank 0 goes (their wait for
the next call fails when its sockets close).

The announcements are pickled Python objects (the batch, small dicts) sent by rank 0 of this
run's own process group: nothing read from a file.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
import torch

from asyncrl.config import Config
from asyncrl.errors import LearnerFailed, one_line
from asyncrl.learner import Learner, load_learner_models
from asyncrl.runtime.hosts import main_module_hidden
from asyncrl.sharding import RankGroup

CALLS = ("step", "weights", "state_dict", "full_model_state", "load_state_dict")
POLL = timedelta(seconds=1)  # a waiting rank re-checks that rank 0 is there this often


class CallChannel:
    """Rank 0's calls to the other ranks, in order, through a TCPStore: ``call/<n>`` holds the
    n-th call, pickled. Rank 0 sets it (never waiting for anyone); the others wait for it as long
    as it takes (between steps the controller may wait minutes for generation), ending when the
    store goes (rank 0 is gone). Rank 0 deletes a call once made: every rank has read it by then,
    since every call has collectives that need all ranks."""

    def __init__(self, store):
        import torch.distributed as dist  # noqa: PLC0415

        self.store = dist.PrefixStore("asyncrl-calls", store)
        self.n = 0

    def announce(self, name: str, args: tuple) -> None:
        self.store.set(f"call/{self.n}", pickle.dumps((name, args)))

    def done(self) -> None:
        self.store.delete_key(f"call/{self.n}")
        self.n += 1

    def next(self) -> tuple[str, tuple]:
        import torch.distributed as dist  # noqa: PLC0415

        key = f"call/{self.n}"
        while True:
            try:
                self.store.wait([key], POLL)
                break
            except dist.DistNetworkError:
                raise
            except dist.DistStoreError:  # not yet: wait on
                continue
        self.n += 1
        return pickle.loads(self.store.get(key))  # noqa: S301 - rank 0 of this run wrote it


@dataclass
class RankSpec:
    """What a spawned rank starts from."""

    cfg: dict  # Config.model_dump()
    policy_path: str
    base_path: str
    rank: int
    world: int
    host: str
    port: int  # rank 0's TCPStore
    threads: int


def rank_device(cfg: Config, local_rank: int) -> torch.device:
    from asyncrl.policy import resolve_device  # noqa: PLC0415 - policy imports transformers

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def join_group(cfg: Config, rank: int, world: int, store, device: torch.device) -> tuple[RankGroup, CallChannel]:
    """Join the learner's process group (NCCL + gloo on CUDA, gloo on CPU) at ``store`` (None:
    torchrun's environment); returns this rank's
    :class:`RankGroup` and the channel rank 0's calls come through."""
    import torch.distributed as dist  # noqa: PLC0415

    timeout = timedelta(seconds=cfg.learner.rank_timeout_s)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if store is None:  # torchrun: its environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=dist.PrefixStore("asyncrl-learner", store), rank=rank,
                                world_size=world, timeout=timeout)
    if store is None:
        # torchrun's own store, which every rank has reached (distributed_c10d has no public getter).
        store = dist.distributed_c10d._get_default_store()
    objects = dist.new_group(backend="gloo", timeout=timeout)
    return RankGroup(rank, world, objects), CallChannel(store)


# --- ranks 1..N-1 ----------------------------------------------------------------------------------

def _leave_signals_to_rank_0() -> None:
    """Ctrl-C and SIGTERM (sent to the whole process group by terminals, schedulers, torchrun) are
    rank 0's: it finishes the step and writes the final checkpoint, which needs every rank, then
    tells the others to exit."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread (a Ray actor's call): Ray delivers no terminal signals there
        pass


def _spawned_rank(spec: RankSpec) -> None:
    """A spawned rank's process: load, join, serve; its error goes to the store for rank 0's message."""
    import torch.distributed as dist  # noqa: PLC0415

    _leave_signals_to_rank_0()
    torch.set_num_threads(spec.threads)
    store = dist.TCPStore(spec.host, spec.port, None, False, timedelta(seconds=60))
    try:
        cfg = Config(**spec.cfg)
        device = rank_device(cfg, spec.rank)
        model, ref, tokenizer = load_learner_models(cfg, spec.policy_path, spec.base_path, device)
        store.set(f"loaded/{spec.rank}", "1")
        group, calls = join_group(cfg, spec.rank, spec.world, store, device)
        serve(Learner(cfg, model, ref, tokenizer.pad_token_id, device, group=group), calls)
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, then the process exits non-zero
        try:
            store.set(f"error/{spec.rank}", one_line(traceback.format_exc() if not str(e) else e, limit=400))
        except Exception:  # noqa: BLE001 - rank 0 is gone: nobody to tell
            pass
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def serve(learner: Learner, calls: CallChannel) -> None:
    """Make rank 0's calls on this rank's learner until it says ``close`` (or is gone)."""
    while True:
        name, args = calls.next()
        if name == "close":
            return
        if name not in CALLS:
            raise ValueError(f"unknown learner call {name!r}")
        getattr(learner, name)(*args)


# --- rank 0 ----------------------------------------------------------------------------------------

def _wait_loaded(ranks) -> None:
    """Until every rank 1..N-1 has loaded its model (the slow part of starting, and the one that
    fails on a bad model or too little memory): a rank that ends first is reported."""
    deadline = time.monotonic() + ranks.timeout_s
    for rank in range(1, ranks.world):
        while True:
            ranks.check_alive()
            if ranks.store.check([f"loaded/{rank}"]):
                break
            if time.monotonic() > deadline:
                raise LearnerFailed(f"learner rank {rank} did not start within learner_timeout_s={ranks.timeout_s:g}s")
            time.sleep(0.05)


class LocalRanks:
    """Ranks 1..N-1 as spawned processes on this machine, and the TCPStore they meet at."""

    def __init__(self, cfg: Config, policy_path: str, base_path: str, threads: int):
        import torch.distributed as dist  # noqa: PLC0415
        import torch.multiprocessing as mp  # noqa: PLC0415

        self.world = cfg.learner.ranks
        self.timeout_s = cfg.learner.rank_timeout_s
        host = "127.0.0.1"
        self.store = dist.TCPStore(host, 0, None, True, timedelta(seconds=cfg.learner.rank_timeout_s),
                                   wait_for_workers=False)
        ctx = mp.get_context("spawn")  # not fork: torch's thread pools are running
        self.procs = []
        for rank in range(1, self.world):
            spec = RankSpec(cfg.model_dump(), policy_path, base_path, rank, self.world, host, self.store.port, threads)
            p = ctx.Process(target=_spawned_rank, args=(spec,), name=f"asyncrl-learner-rank{rank}", daemon=True)
            with main_module_hidden():
                p.start()
            self.procs.append(p)

    def wait_loaded(self) -> None:
        _wait_loaded(self)

    def check_alive(self) -> None:
        for rank, p in enumerate(self.procs, start=1):
            if p.exitcode is not None:
                raise LearnerFailed(f"learner rank {rank} exited (exit code {p.exitcode})" + self._reason(rank))

    def _reason(self, rank: int) -> str:
        try:
            if self.store.check([f"error/{rank}"]):
                return ": " + self.store.get(f"error/{rank}").decode()
        except Exception:  # noqa: BLE001
            pass
        return ""

    def first_failure(self) -> str | None:
        """A line naming a rank that exited (after a collective failed), if one did."""
        time.sleep(0.2)  # the failed collective can come a moment before the exit is visible
        for rank, p in enumerate(self.procs, start=1):
            p.join(timeout=1.0) if p.exitcode is None and self._reason(rank) else None
            if p.exitcode is not None:
                return f"learner rank {rank} exited (exit code {p.exitcode})" + self._reason(rank)
        return None

    def kill(self) -> None:
        for p in self.procs:
            p.kill()

    def close(self, timeout_s: float = 10.0) -> None:
        for p in self.procs:
            p.join(timeout=timeout_s)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


class _RankActor:
    """A learner rank in a Ray actor: :func:`_spawned_rank` until rank 0 closes (one long call)."""

    def run(self, spec: RankSpec) -> None:
        _spawned_rank(spec)


_RANK_ACTOR: list[Any] = []


class RayRanks:
    """Ranks 1..N-1 as Ray actors, each reserving ``learner_num_cpus`` / ``learner_num_gpus``, in a
    placement group (``learner_num_nodes`` bundles ``STRICT_SPREAD``, else one per rank, ``PACK``).
    They meet rank 0 at its TCPStore on this node's address."""

    def __init__(self, cfg: Config, policy_path: str, base_path: str, threads: int):
        import torch.distributed as dist  # noqa: PLC0415

        from asyncrl.runtime.ray_host import config_for_actors, ensure_ray  # noqa: PLC0415
        from asyncrl.runtime.object_store import ray_module  # noqa: PLC0415

        self.ray = ray = ray_module()
        self.world, self.timeout_s = cfg.learner.ranks, cfg.learner.rank_timeout_s
        self.owns_ray = ensure_ray(cfg)
        self.store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=self.timeout_s),
                                   wait_for_workers=False)  # listens on every interface
        host = ray.util.get_node_ip_address()
        rt = cfg.runtime
        n = self.world - 1
        nodes = rt.learner_num_nodes or n
        per_node = [n // nodes + (1 if i < n % nodes else 0) for i in range(nodes)]
        bundles = [{"CPU": rt.learner_num_cpus * k, **({"GPU": rt.learner_num_gpus * k} if rt.learner_num_gpus else {})}
                   for k in per_node]
        self.pg = ray.util.placement_group(bundles, strategy="STRICT_SPREAD" if rt.learner_num_nodes else "PACK")
        if not ray.wait([self.pg.ready()], timeout=self.timeout_s)[0]:
            ray.util.remove_placement_group(self.pg)
            raise LearnerFailed(f"the cluster cannot place {n} learner rank actors ({rt.learner_num_cpus:g} CPUs, "
                                f"{rt.learner_num_gpus:g} GPUs each"
                                + (f", over {rt.learner_num_nodes} nodes" if rt.learner_num_nodes else "") + ")")
        if not _RANK_ACTOR:
            _RANK_ACTOR.append(ray.remote(_RankActor))
        strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy
        cfg_dict = config_for_actors(cfg)
        bundle_of = [b for b, k in enumerate(per_node) for _ in range(k)]
        self.actors, self.refs = [], []
        for rank in range(1, self.world):
            actor = _RANK_ACTOR[0].options(
                name=f"asyncrl-learner-rank{rank}-{self.store.port}", num_cpus=rt.learner_num_cpus,
                num_gpus=rt.learner_num_gpus, max_restarts=0,
                scheduling_strategy=strategy(placement_group=self.pg, placement_group_bundle_index=bundle_of[rank - 1]),
            ).remote()
            spec = RankSpec(cfg_dict, policy_path, base_path, rank, self.world, host, self.store.port,
                            max(1, int(rt.learner_num_cpus)) if rt.learner_num_cpus >= 1 else threads)
            self.actors.append(actor)
            self.refs.append(actor.run.remote(spec))

    def wait_loaded(self) -> None:
        _wait_loaded(self)

    def check_alive(self) -> None:
        for rank, ref in enumerate(self.refs, start=1):
            if self.ray.wait([ref], timeout=0)[0]:
                raise LearnerFailed(f"learner rank {rank} (a Ray actor) ended" + self._reason(rank, ref))

    def _reason(self, rank: int, ref) -> str:
        try:
            if self.store.check([f"error/{rank}"]):
                return ": " + self.store.get(f"error/{rank}").decode()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.ray.get(ref, timeout=0)
        except Exception as e:  # noqa: BLE001 - the actor died: Ray says why
            return ": " + one_line(e, "last", limit=300)
        return ""

    def first_failure(self) -> str | None:
        time.sleep(0.5)  # the failed collective can come a moment before Ray sees the actor die
        for rank, ref in enumerate(self.refs, start=1):
            if self.ray.wait([ref], timeout=0)[0]:
                return f"learner rank {rank} (a Ray actor) ended" + self._reason(rank, ref)
        return None

    def kill(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - gone already
                pass

    def close(self, timeout_s: float = 10.0) -> None:
        self.ray.wait(self.refs, num_returns=len(self.refs), timeout=timeout_s)
        self.kill()
        try:
            self.ray.util.remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001
            pass
        if self.owns_ray and self.ray.is_initialized():
            self.ray.shutdown()


class RankLeader:
    """Rank 0's learner as the controller sees it: each call is announced to the other ranks,
    then made here. Everything else (``version``, ``model``, ...) is the local learner's."""

    sharded = True

    def __init__(self, learner: Learner, calls: CallChannel, ranks: LocalRanks | RayRanks | None):
        self._learner = learner
        self._calls = calls
        self._ranks = ranks  # None under torchrun (its agent watches the processes)
        self._closed = False
        self._failed = False

    def __getattr__(self, name: str):
        return getattr(self._learner, name)

    def _call(self, name: str, args: tuple = (), local: tuple | None = None):
        try:
            if self._ranks is not None:
                self._ranks.check_alive()
            self._calls.announce(name, args)
            out = getattr(self._learner, name)(*(args if local is None else local))
            self._calls.done()
            return out
        except LearnerFailed:
            self._failed = True
            raise
        except Exception as e:  # noqa: BLE001 - a collective failed: a rank died or hung
            self._failed = True
            who = self._ranks.first_failure() if self._ranks is not None else None
            if who is None and "timed out" in str(e).lower():
                who = (f"a learner rank did not take part within learner_timeout_s="
                       f"{self._learner.cfg.learner.rank_timeout_s:g}s (hung or too slow)")
            raise LearnerFailed(f"the sharded learner failed in {name}: " + (who or one_line(e, "first", limit=300))) \
                from e

    def step(self, batch):
        return self._call("step", (batch,))

    def weights(self):
        return self._call("weights")

    def state_dict(self):
        return self._call("state_dict")

    def full_model_state(self):
        return self._call("full_model_state")

    def load_state_dict(self, state: dict):
        # The others need everything but the optimizer state, which rank 0 broadcasts shard-wise.
        return self._call("load_state_dict", ({**state, "optimizer": None},), local=(state,))

    def close(self) -> None:
        """Tell the other ranks to exit, wait for them, leave the process group."""
        if self._closed:
            return
        self._closed = True
        import torch.distributed as dist  # noqa: PLC0415

        if not self._failed:
            self._calls.announce("close", ())
        if self._ranks is not None:
            if self._failed:  # a rank hung or died: the others may be stuck in a collective
                self._ranks.kill()
            self._ranks.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def start_sharded_learner(cfg: Config, policy_path: str, base_path: str, threads: int):
    """Rank 0's side of starting ``learner_ranks`` ranks: spawn the others (none under
    ``torchrun``), load this rank's model, join, build the sharded learner; returns
    ``(RankLeader, tokenizer)``."""
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    ranks = None if torchrun else (RayRanks if cfg.runtime.name == "ray" else LocalRanks)(cfg, policy_path, base_path,
                                                                                          threads)
    try:
        device = rank_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
        model, ref, tokenizer = load_learner_models(cfg, policy_path, base_path, device)
        store = None  # torchrun
        if ranks is not None:
            ranks.wait_loaded()
            store = ranks.store
        try:
            group, calls = join_group(cfg, 0, cfg.learner.ranks, store, device)
            learner = Learner(cfg, model, ref, tokenizer.pad_token_id, device, group=group)
        except LearnerFailed:
            raise
        except Exception as e:  # noqa: BLE001
            who = ranks.first_failure() if ranks is not None else None
            raise LearnerFailed("the sharded learner failed to start: " + (who or one_line(e, "first", limit=300))) \
                from e
        return RankLeader(learner, calls, ranks), tokenizer
    except BaseException:
        if ranks is not None:
            ranks.kill()
            ranks.close(timeout_s=5)
        import torch.distributed as dist  # noqa: PLC0415

        if dist.is_initialized():
            dist.destroy_process_group()
        raise


def serve_torchrun_rank(cfg: Config) -> None:
    """A ``torchrun`` rank other than 0: load, join, serve rank 0's calls until it closes. The
    weights come from where rank 0's come from (the resumed checkpoint, else ``model``): a folder
    every node sees."""
    from asyncrl.checkpoint import find_checkpoint  # noqa: PLC0415
    from asyncrl.policy import resolve_model_path  # noqa: PLC0415

    _leave_signals_to_rank_0()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    base_path = resolve_model_path(cfg.model, cfg.task.name)
    policy_path = str(find_checkpoint(cfg.resume)) if cfg.resume else base_path
    device = rank_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    model, ref, tokenizer = load_learner_models(cfg, policy_path, base_path, device)
    group, calls = join_group(cfg, rank, world, None, device)
    try:
        serve(Learner(cfg, model, ref, tokenizer.pad_token_id, device, group=group), calls)
    finally:
        import torch.distributed as dist  # noqa: PLC0415

        if dist.is_initialized():
            dist.destroy_process_group()
