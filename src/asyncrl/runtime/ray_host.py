"""The Ray runtime: generator workers as Ray actors, on this machine or across a cluster.

``RayHost`` implements the ``Host`` protocol of ``hosts.py``, so the controller drives Ray actors
exactly as it drives local threads or processes:

- one actor per generator, each holding a :class:`~asyncrl.runtime.worker.GeneratorService`, in
  one placement group (a bundle per generator, ``placement_strategy``); a restarted generator
  takes the bundle its predecessor held;
- messages travel as actor calls, which Ray runs in the order one caller submitted them:
  ``WeightsUpdate`` -> ``load``, ``GenerateRequest`` -> ``generate``; the host waits on the
  returned refs (``ray.wait``) and turns each into the worker's reply, or into ``WorkerLost`` when
  the actor died (killed, node lost, out of memory);
- each actor is built from the same :class:`~asyncrl.runtime.spec.WorkerSpec` as a local worker
  (``setup(spec)``);
- weights go through the object store (``object_store.py``): one ``ray.put`` per publish, read
  by every generator;
- ``reward_actor: true`` loads the reward-side models once, in one actor every generator calls
  (:class:`RemoteRewardTask`);
- ``ray_learner: actor`` runs the whole controller and learner inside an actor
  (``ray_learner.py``, which imports this module; this one never imports the controller).

Ray is imported lazily: ``import asyncrl`` works without it. See docs/distributed.md.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from typing import Any

from asyncrl.config import Config, absolute_paths, flat_fields, get_path, set_path
from asyncrl.errors import one_line
from asyncrl.policy import resolve_device
from asyncrl.runtime.broadcast import BroadcastPublisher
from asyncrl.envs import make_task
from asyncrl.runtime.hosts import WORKER_DEPTH, shard_of
from asyncrl.runtime.object_store import ObjectRefBox, ObjectStorePublisher, ray_module, resolved
from asyncrl.runtime.spec import WorkerSpec
from asyncrl.runtime.transport import WeightPublisher
from asyncrl.runtime.transports import make_receiver
from asyncrl.runtime.worker import GeneratorService, build_generator, error_message
from asyncrl.runtime.messages import (
    FromWorker, GenerateRequest, RequestDone, RestoreGenerator, StopWorker, ToWorker, WeightsUpdate, WorkerError,
    WorkerLost,
    WorkerReady,
)

# Tasks whose reward-side models (reward model, victim, toxicity classifier) can live in the shared
# reward actor; the others score in plain Python and have nothing worth sharing.
log = logging.getLogger(__name__)

REWARD_ACTOR_TASKS = ("reward_model", "redteam")
# How long to wait for the cluster to fit every generator's bundle before giving up. Long enough
# for an autoscaler to add nodes; a local Ray this run started is checked at once instead.
PLACEMENT_TIMEOUT_S = 600.0
PLACEMENT_NOTICE_S = 10.0  # say what we are waiting for after this long
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
# Environment the actors should share with the driver (quiet progress bars from every role).
FORWARDED_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM")
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by `ray job submit` for the job's driver


_ray = ray_module  # ``import ray``, or a one-line error (Ray is optional)


# --- actors --------------------------------------------------------------------------------------

def _node() -> tuple[str, str]:
    ray = _ray()
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


class _GeneratorActor:
    """Body of a generator actor (``ray.remote`` is applied in :func:`_actor_classes`). Every
    exception inside becomes the worker's ``WorkerError`` reply, as in ``worker_loop``; only the
    actor's death reaches the host as a Ray error."""

    def __init__(self, worker_id: int):
        self.worker_id = worker_id
        self.service = None
        # In-flight updates: ``offer`` runs in its own concurrency group (a second thread) while
        # ``generate`` runs, and leaves the newest update here for the decoding loop to take.
        self._offered: WeightsUpdate | None = None
        self._offer_lock = threading.Lock()
        self._inflight_version = -1  # the newest update taken in flight (its ordered load is then skipped)

    def setup(self, spec: WorkerSpec) -> tuple[WorkerReady, str, str] | WorkerError:
        """Build the generator of ``spec`` (the same spec a local worker gets; ``reward_actor`` set
        when the task's reward-side models live in the shared reward actor); (ready, node id, node
        IP) or the build's error."""
        try:
            import torch

            if spec.threads:
                torch.set_num_threads(spec.threads)
            task = RemoteRewardTask(Config(**spec.config), spec.reward_actor) if spec.reward_actor is not None else None
            gen = build_generator(spec, task=task)
            self.service = GeneratorService(gen, make_receiver(spec.transport, spec.receiver_spec), self.worker_id)
            self.service.between_steps = self._take_offered
            return (WorkerReady(self.worker_id), *_node())
        except BaseException as e:  # noqa: BLE001 - reported to the controller, which decides
            return _error(self.worker_id, e)

    def offer(self, update: WeightsUpdate) -> None:
        """In-flight updates: ``update`` reaches a ``generate`` in progress (the ordered ``load``
        follows it and is skipped if the update was taken meanwhile)."""
        with self._offer_lock:
            if self._offered is None or update.version > self._offered.version:
                self._offered = update

    def _take_offered(self) -> None:
        """Between two decoding steps (the generate thread): load the newest offered update."""
        with self._offer_lock:
            update, self._offered = self._offered, None
        if update is not None and update.version > self.service.version:
            self.service.load(update)
            self._inflight_version = update.version

    def load(self, update: WeightsUpdate) -> WorkerError | None:
        try:
            if update.version > self._inflight_version:  # else taken in flight already
                self.service.load(update)
            return None
        except BaseException as e:  # noqa: BLE001
            return _error(self.worker_id, e)

    def restore(self, msg: RestoreGenerator) -> WorkerError | None:
        try:
            self.service.restore(msg.state)
            return None
        except BaseException as e:  # noqa: BLE001
            return _error(self.worker_id, e)

    def generate(self, req: GenerateRequest) -> RequestDone | WorkerError:
        try:
            return self.service.generate(req)
        except BaseException as e:  # noqa: BLE001
            return _error(self.worker_id, e)


def _error(worker_id: int, e: BaseException) -> WorkerError:
    return error_message(worker_id, e)


class _RewardActor:
    """The reward side of a task (its reward models, victim, classifier), loaded once for every
    generator. Calls are served one at a time, in arrival order, on one copy of the models."""

    def __init__(self, cfg_dict: dict):
        self.task = make_task(Config(**cfg_dict))

    def reward(self, prompts, completions) -> list:
        return self.task.reward(prompts, completions)


class RewardActorUnavailable(BaseException):
    """The shared reward actor died (and Ray gave up restarting it). A ``BaseException`` on purpose:
    :func:`asyncrl.tasks.base.checked_rewards` treats every ``Exception`` from a reward as the
    user's reward function failing (stop the run, or skip the group); this is the infrastructure
    failing, so it must pass through and reach the controller as the generator's ``WorkerError``
    (a restart), not as a ``RewardError``."""


class RemoteRewardTask:
    """The configured task with its ``reward`` computed by the shared reward actor (what a
    generator needs of a task: ``train_prompts`` and ``reward``).

    Prompts come from a local copy of the task (cheap: the reward-side models load lazily, on
    first scoring, which never happens here). Exceptions raised by the reward inside the actor
    are re-raised as themselves, so ``checked_rewards`` reports and localises them exactly as for
    a local task.
    """

    def __init__(self, cfg: Config, actor):
        self._task = make_task(cfg)
        self._actor = actor
        self.name = self._task.name
        self.reward_name = getattr(self._task, "reward_name", None)
        self.wants_kl = getattr(self._task, "wants_kl", False)

    def train_prompts(self, seed: int):
        return self._task.train_prompts(seed)

    def eval_prompts(self):
        return self._task.eval_prompts()

    def reward(self, prompts, completions) -> list:
        ray = _ray()
        try:
            return ray.get(self._actor.reward.remote(list(prompts), list(completions)))
        except ray.exceptions.RayTaskError as e:
            if e.cause is not None:
                raise e.cause from None  # the reward's own exception, as if it ran here
            raise
        except ray.exceptions.RayError as e:
            raise RewardActorUnavailable(f"the shared reward actor is gone: {one_line(e, 'last')}") from e


_CLASSES: dict[str, Any] = {}


def _actor_classes() -> dict[str, Any]:
    """The ``ray.remote`` actor classes, made on first use so that importing this module (and
    ``asyncrl``) never needs Ray."""
    if not _CLASSES:
        ray = _ray()
        # "inflight": a second thread for ``offer`` only; every other method stays in the default
        # group, one at a time and in the order sent.
        _CLASSES.update(generator=ray.remote(concurrency_groups={"inflight": 1})(_GeneratorActor),
                        reward=ray.remote(_RewardActor))
    return _CLASSES


# --- Ray itself ------------------------------------------------------------------------------------

def _cpus_needed(cfg: Config, learner_actor: bool) -> float:
    """Logical CPUs the actors of a run reserve (the driver itself reserves none)."""
    need = cfg.asynchrony.num_generators * cfg.runtime.generator_num_cpus
    if cfg.runtime.reward_actor:
        need += 1
    if learner_actor:
        need += cfg.runtime.learner_num_cpus
    return need + (cfg.learner.ranks - 1) * cfg.runtime.learner_num_cpus  # the learner's rank actors


def _gpus_needed(cfg: Config, learner_actor: bool) -> float:
    need = cfg.asynchrony.num_generators * cfg.runtime.generator_num_gpus + (cfg.runtime.reward_num_gpus if cfg.runtime.reward_actor else 0.0)
    return need + (cfg.runtime.learner_num_gpus if learner_actor else 0.0) + (cfg.learner.ranks - 1) * cfg.runtime.learner_num_gpus


def ensure_ray(cfg: Config, learner_actor: bool = False) -> bool:
    """Connect to ``cfg.runtime.ray_address``, or start a local Ray sized for this run when it is None.
    Returns True when this call initialised Ray (the caller then shuts it down); False when Ray
    was already initialised (inside the learner actor, or a test's own cluster)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    # Not inside a submitted Ray job: Ray refuses to merge a driver env var the job also sets.
    env = {} if JOB_CONFIG_ENV in os.environ else {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level="warning",
                              runtime_env={"env_vars": env} if env else None)
    if cfg.runtime.ray_address is None:
        # "local", not None: None would join a cluster that `ray start` left on this machine.
        # Logical CPUs: at least the cores, and enough that every actor of the run fits, since
        # generators mostly wait on each other and the learner on a small machine.
        cores = os.cpu_count() or 1
        ray.init(address="local", num_cpus=max(cores, math.ceil(_cpus_needed(cfg, learner_actor))), **kw)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        need = _gpus_needed(cfg, learner_actor)
        if need > gpus + 1e-9:
            ray.shutdown()
            raise ValueError(f"runtime=ray: the run's actors reserve {need:g} GPUs but this machine has {gpus:g} "
                             "(lower generator_num_gpus / reward_num_gpus / learner_num_gpus, or set ray_address)")
    else:
        ray.init(address=cfg.runtime.ray_address, **kw)
    return True



def absolute_path(path: str | None) -> str | None:
    """``path`` made absolute when it is relative and exists here; anything else unchanged (a Hugging
    Face dataset name like ``openai/gsm8k``, ``profanity-check``, None)."""
    if isinstance(path, str) and not os.path.isabs(path) and os.path.exists(path):
        return os.path.abspath(path)
    return path


def config_for_actors(cfg: Config) -> dict:
    """``cfg`` as a dict for actors, its path fields made absolute (config.absolute_paths): actors on
    other nodes do not run in the driver's working directory (the files themselves must be on a
    filesystem every node sees: docs/distributed.md)."""
    return absolute_paths(cfg)


def _cpu_if_auto(d: dict, cfg: Config, flat: str) -> None:
    """Set the device field ``flat`` (``device``, ``reward_device``) of the dump ``d`` to cpu when it is
    ``auto`` (and the config has it: only tasks with reward-side models have ``reward_device``)."""
    f = flat_fields(type(cfg))[flat]
    if get_path(cfg, f.path) == "auto":
        set_path(d, f.path, "cpu")


# --- the host --------------------------------------------------------------------------------------

class RayWorker:
    """One generator actor, seen through the ``Worker`` protocol; its host tracks the replies."""

    def __init__(self, host: "RayHost", worker_id: int, actor, bundle: int | None, name: str):
        self.host = host
        self.worker_id = worker_id
        self.actor = actor
        self.bundle = bundle  # placement-group bundle index it holds
        self.name = name  # Ray actor name (ray.get_actor(name) finds it)
        self.finished = False  # lost, failed or stopped: nothing more is reported for it
        self.node_id: str | None = None
        self.node_ip: str | None = None
        self.held: deque = deque()  # messages waiting behind a weights update whose put is not done

    def send(self, msg: ToWorker) -> None:
        self.host._send(self, msg)

    def alive(self) -> bool:
        return not self.finished

    def kill(self) -> None:
        """Kill the actor now; the host reports it as ``WorkerLost``, like any other death."""
        self.host._kill(self)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Let the calls already sent finish (up to ``timeout_s``), then end the actor."""
        self.host._stop([self], timeout_s)


class RayHost:
    """Generators as Ray actors: see the module docstring and docs/distributed.md."""

    name = "ray"
    depth = WORKER_DEPTH

    @staticmethod
    def _make_publisher(cfg: Config) -> WeightPublisher:
        if cfg.asynchrony.weight_transport != "broadcast":
            return ObjectStorePublisher()

        # NCCL needs every rank on its own GPU: a learner on GPU and generators holding whole GPUs.
        # Otherwise (CPU, or generators sharing a GPU) gloo, staged through host memory. The store
        # listens on this node's address, which generators on other nodes can reach.
        nccl = resolve_device(cfg.device).type == "cuda" and cfg.runtime.generator_num_gpus >= 1
        return BroadcastPublisher(backend="nccl" if nccl else "gloo", device="cuda" if nccl else "cpu",
                                  host=_ray().util.get_node_ip_address())

    def __init__(self, cfg: Config, policy_path: str, ref_path: str | None, inputs=None):
        if cfg.runtime.reward_actor and cfg.task.name not in REWARD_ACTOR_TASKS:
            raise ValueError(f"reward_actor=true shares the reward-side models of tasks {' and '.join(REWARD_ACTOR_TASKS)}; "
                             f"task {cfg.task.name!r} has none")
        self.cfg = cfg
        self._inflight = cfg.engine.vllm.inflight_updates  # weights also offered to a generate in progress
        # Ray 2.60 leaves every GPU of a node visible to an actor that reserved none; `auto` devices
        # must not pick a GPU that Ray may have given to another actor.
        self.cfg_dict = config_for_actors(cfg)  # what generator actors build from
        if cfg.runtime.generator_num_gpus == 0:
            _cpu_if_auto(self.cfg_dict, cfg, "device")
            _cpu_if_auto(self.cfg_dict, cfg, "reward_device")
        self._reward_cfg = config_for_actors(cfg)
        if cfg.runtime.reward_num_gpus == 0:
            _cpu_if_auto(self._reward_cfg, cfg, "reward_device")
        self.policy_path, self.ref_path = absolute_path(policy_path), absolute_path(ref_path)
        self.inputs = inputs.dumps() if inputs is not None else None  # asyncrl.train's objects, for every actor
        self.threads = cfg.asynchrony.generator_threads or max(1, int(cfg.runtime.generator_num_cpus))
        self._owns_ray = ensure_ray(cfg)
        ray = _ray()
        self._ray = ray
        self._token = uuid.uuid4().hex[:8]  # actor names stay unique if several hosts share a cluster
        self.publisher = self._make_publisher(cfg)
        self.workers: dict[int, RayWorker] = {}
        self._pending: dict[Any, tuple[int, str]] = {}  # ref -> (worker id, call), in submission order
        self._events: deque[FromWorker] = deque()  # replies known without waiting on a ref
        self.pg = None
        self.reward_actor = None
        try:
            self._bundle_spec = {k: v for k, v in {"CPU": cfg.runtime.generator_num_cpus, "GPU": cfg.runtime.generator_num_gpus,
                                                   **cfg.runtime.generator_custom_resources}.items() if v > 0}
            if self._bundle_spec:
                self.pg = self._placement_group()
            self._slots: list[int | None] = [None] * cfg.asynchrony.num_generators  # bundle -> worker id holding it
            if cfg.runtime.reward_actor:
                self.reward_actor = _actor_classes()["reward"].options(
                    name=f"asyncrl-reward-{self._token}", num_cpus=1, num_gpus=cfg.runtime.reward_num_gpus,
                    # The reward is a pure function of its inputs: after a crash Ray may restart
                    # the actor and replay the calls that were in flight.
                    max_restarts=cfg.asynchrony.max_generator_restarts, max_task_retries=cfg.asynchrony.max_generator_restarts,
                ).remote(self._reward_cfg)
        except BaseException:
            self.close()
            raise

    def _placement_group(self):
        ray = self._ray
        from ray.util.placement_group import placement_group, remove_placement_group

        n, spec = self.cfg.asynchrony.num_generators, self._bundle_spec
        if self.cfg.runtime.ray_address is None:
            # A local Ray (started for this run, here or by run_in_learner_actor) never grows: say at
            # once when the bundles cannot fit.
            have = ray.cluster_resources()
            short = {k: v * n for k, v in spec.items() if v * n > have.get(k, 0.0) + 1e-9}
            if short:
                raise ValueError(f"runtime=ray: {n} generators reserve {_fmt(short)} but this machine's Ray has "
                                 f"{_fmt({k: have.get(k, 0.0) for k in short})}")
            nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
            if self.cfg.runtime.placement_strategy == "STRICT_SPREAD" and n > nodes:
                raise ValueError(f"runtime=ray: placement_strategy=STRICT_SPREAD puts each of the {n} generators on "
                                 f"its own node, but this Ray has {nodes} node(s); use SPREAD or set ray_address")
        pg = placement_group([dict(spec) for _ in range(n)], strategy=self.cfg.runtime.placement_strategy,
                             name=f"asyncrl-generators-{self._token}")
        t0 = time.monotonic()
        told = False
        while True:
            ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_NOTICE_S if not told else 30.0)
            if ready:
                return pg
            waited = time.monotonic() - t0
            if waited >= PLACEMENT_TIMEOUT_S:
                remove_placement_group(pg)
                raise ValueError(f"runtime=ray: the cluster could not fit {n} generator bundles of {_fmt(spec)} "
                                   f"({self.cfg.runtime.placement_strategy}) within {PLACEMENT_TIMEOUT_S:.0f}s; available: "
                                   f"{_fmt(ray.available_resources())}")
            log.info("waiting %.0fs for the cluster to fit %d generator bundles of %s (%s); available now: %s",
                     waited, n, _fmt(spec), self.cfg.runtime.placement_strategy, _fmt(ray.available_resources()))
            told = True

    # --- Host protocol ---
    def start(self, worker_id: int, start_version: int, slot: int = 0) -> RayWorker:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if worker_id in self.workers:
            raise ValueError(f"worker id {worker_id} was already used; ids are never reused")
        bundle = None
        opts: dict[str, Any] = dict(num_cpus=self.cfg.runtime.generator_num_cpus, num_gpus=self.cfg.runtime.generator_num_gpus,
                                    resources=self.cfg.runtime.generator_custom_resources or None)
        if self.pg is not None:
            bundle = self._free_bundle()
            self._slots[bundle] = worker_id
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=bundle)
        spec = WorkerSpec(self.cfg_dict, self.policy_path, self.ref_path, worker_id, start_version,
                          transport=self.publisher.name, receiver_spec=self.publisher.receiver_spec(worker_id),
                          threads=self.threads, inputs=self.inputs, reward_actor=self.reward_actor,
                          shard=shard_of(self.cfg_dict, slot))
        name = f"asyncrl-gen-{worker_id}-{self._token}"
        # max_restarts=0: a dead generator is replaced by the controller under a fresh id (with the
        # latest weights and its requests re-dispatched), not silently restarted by Ray.
        actor = _actor_classes()["generator"].options(name=name, max_restarts=0, **opts).remote(worker_id)
        w = RayWorker(self, worker_id, actor, bundle, name)
        self.workers[worker_id] = w
        ref = actor.setup.remote(spec)
        self._pending[ref] = (worker_id, "setup")
        return w

    def next_message(self, timeout_s: float) -> FromWorker | None:
        ray = self._ray
        deadline = time.monotonic() + timeout_s
        while True:
            if self._events:
                return self._events.popleft()
            held = self._flush()
            remaining = deadline - time.monotonic()
            if not self._pending:
                if remaining <= 0:
                    return None
                time.sleep(min(POLL_S, remaining))  # an event may still arrive from worker.kill()
                continue
            # Oldest first among those ready: a worker's replies come back in the order it was sent them.
            ready, _ = ray.wait(list(self._pending), num_returns=1,
                                timeout=max(0.0, min(remaining, POLL_S if held else 1.0)))
            if not ready:
                if time.monotonic() >= deadline:
                    return None
                continue
            ref = ready[0]
            wid, call = self._pending.pop(ref)
            w = self.workers[wid]
            if w.finished:
                continue  # its loss or error was already reported
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayError as e:
                # RayActorError / ActorDiedError (killed, node died, out of memory), worker crash:
                # whatever the call was (setup, load or generate), the worker is gone.
                self._finish(w, kill=True)
                return WorkerLost(wid, f"ray actor {w.name} died during {call}: {one_line(e, 'last')}")
            if isinstance(reply, WorkerError):
                # The worker is done after an error, as a thread or process worker exits.
                self._finish(w, kill=True)
                return reply
            if call == "setup":
                ready, w.node_id, w.node_ip = reply
                where = f", bundle {w.bundle}" if w.bundle is not None else ""
                log.info("generator %d ready on node %s (%s%s)", wid, w.node_id[:12], w.node_ip, where)
                return ready
            if reply is None:  # a load that went fine
                continue
            return reply

    def close(self) -> None:
        try:
            live = [w for w in self.workers.values() if not w.finished]
            if live:
                self._stop(live, STOP_TIMEOUT_S)
            if self.reward_actor is not None:
                self._ray.kill(self.reward_actor, no_restart=True)
                self.reward_actor = None
            if self.pg is not None:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self.pg)
                self.pg = None
            self.publisher.close()
        finally:
            if self._owns_ray and self._ray.is_initialized():
                self._ray.shutdown()
            self._owns_ray = False

    # --- internals ---
    def _free_bundle(self) -> int:
        for i, holder in enumerate(self._slots):
            if holder is None or self.workers[holder].finished:
                return i
        raise RuntimeError(f"all {len(self._slots)} generator bundles are held by live generators; "
                           "stop or lose one before starting another")

    def _send(self, w: RayWorker, msg: ToWorker) -> None:
        if w.finished:
            return  # the controller learns of its end through next_message
        if w.held or (isinstance(msg, WeightsUpdate) and isinstance(msg.payload, ObjectRefBox)
                      and not msg.payload.ready):
            w.held.append(msg)  # keeps this worker's order: sent by _flush once the put is done
            return
        self._call(w, msg)

    def _flush(self) -> bool:
        """Sends held messages whose weights are in the object store; True if any stay held."""
        waiting = False
        for w in self.workers.values():
            while w.held and not w.finished:
                head = w.held[0]
                if isinstance(head, WeightsUpdate) and isinstance(head.payload, ObjectRefBox) and not head.payload.ready:
                    waiting = True
                    break
                self._call(w, w.held.popleft())
        return waiting

    def _call(self, w: RayWorker, msg: ToWorker) -> None:
        if isinstance(msg, WeightsUpdate):
            msg = resolved(msg)
            if self._inflight:
                self._pending[w.actor.offer.options(concurrency_group="inflight").remote(msg)] = (w.worker_id, "offer")
            self._pending[w.actor.load.remote(msg)] = (w.worker_id, "load")
        elif isinstance(msg, GenerateRequest):
            self._pending[w.actor.generate.remote(msg)] = (w.worker_id, "generate")
        elif isinstance(msg, RestoreGenerator):
            self._pending[w.actor.restore.remote(msg)] = (w.worker_id, "restore")
        elif isinstance(msg, StopWorker):
            self._stop([w], STOP_TIMEOUT_S)
        else:
            raise TypeError(f"a generator worker takes WeightsUpdate, GenerateRequest or StopWorker, not {type(msg).__name__}")

    def _finish(self, w: RayWorker, kill: bool) -> None:
        """No more messages for ``w``; free its bundle (killing the actor releases it)."""
        w.finished = True
        for ref in [r for r, (wid, _) in self._pending.items() if wid == w.worker_id]:
            del self._pending[ref]
        if kill:
            try:
                self._ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _kill(self, w: RayWorker) -> None:
        if w.finished:
            return
        self._finish(w, kill=True)
        self._events.append(WorkerLost(w.worker_id, f"ray actor {w.name} was killed"))

    def _stop(self, workers: list[RayWorker], timeout_s: float) -> None:
        """Graceful: each actor exits after the calls it was already sent; killed after ``timeout_s``."""
        ray = self._ray
        exits = []
        for w in workers:
            if w.finished:
                continue
            w.finished = True
            for ref in [r for r, (wid, _) in self._pending.items() if wid == w.worker_id]:
                del self._pending[ref]
            exits.append(w.actor.__ray_terminate__.remote())
        if exits:
            ray.wait(exits, num_returns=len(exits), timeout=timeout_s)
        for w in workers:
            try:
                ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already exited
                pass


def _fmt(resources: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())
                           if not k.startswith(("node:", "bundle_group"))) + "}"


__all__ = ["RayHost", "RayWorker", "RemoteRewardTask", "RewardActorUnavailable", "config_for_actors", "ensure_ray"]
