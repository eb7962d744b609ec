"""The controller: one training loop for every runtime (local inline/thread/process, Ray).

Read top to bottom, a run is:

1. set up the task, learner, replay buffer and a ``Host`` for the generators (``make_host``);
2. start ``num_generators`` workers, publish the initial weights, evaluate at step 0;
3. loop until ``steps``: dispatch what the ``Scheduler``'s lag gate allows, take a completed
   request (any completion order the bound allows) into the buffer, train on a batch, publish
   weights every ``sync_every`` steps, log one metrics row, evaluate / checkpoint on cadence;
   while no request can be taken, handle worker messages: replies, and lost workers (replaced
   under a fresh id, sent the latest weights; their requests re-dispatched);
4. final evaluation, final checkpoint, ``summary.json``.

Checkpoints (``checkpoint.py``) hold everything a resume needs to continue exactly: weights,
optimizer, LR schedule, counters, the replay buffer, every random state and each generator's
prompt-stream position; they are written every ``save_every`` steps / ``save_every_minutes``, on
Ctrl-C and SIGTERM, and when the run stops on an error between steps. A run that fails before its
first step leaves no run folder behind. See docs/reliability.md.

The scheduler owns the bound (see ``scheduler.py``); the host owns where workers run
(``hosts.py``, ``ray_host.py``); the weight transport owns how weights travel (``transport.py``).
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
import yaml

from asyncrl.buffer import make_buffer
from asyncrl.checkpoint import find_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from asyncrl.config import Config, save_config
from asyncrl.evaluation import evaluate
from asyncrl.io import atomic_write_text
from asyncrl.learner import Learner
from asyncrl.lora import ReferenceView, load_policy
from asyncrl.metrics import RunLogger
from asyncrl.engines import make_engine
from asyncrl.engines.vllm import require_vllm
from asyncrl.errors import RunAborted, RunFailed  # noqa: F401 - RunAborted: re-exported
from asyncrl.policy import TRAIN_DTYPE, autocast, load_model, load_tokenizer, resolve_device, resolve_model_path
from asyncrl.runtime.hosts import Host, InlineHost, LocalHost, Worker
from asyncrl.runtime.messages import (
    GeneratorState, RequestDone, RestoreGenerator, WeightsUpdate, WorkerError, WorkerLost, WorkerReady,
)
from asyncrl.runtime.scheduler import Scheduler
from asyncrl.runtime.transport import distinct_bytes
from asyncrl.runtime.worker import default_threads
from asyncrl.tasks import make_task
from asyncrl.tasks.base import RewardError

POLL_S = 0.05  # how long to wait for a worker message before re-checking stop requests


# Files a run writes into its folder; a run that fails before training removes them again.
RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.jsonl", "generations.jsonl", "summary.json", "tb", "checkpoints",
             "wandb", "wandb_id")


def make_host(cfg: Config, policy_path: str, ref_path: str, gen_threads: int, inputs=None) -> Host:
    """The host for ``cfg.runtime.name`` / ``cfg.asynchrony.workers``: the one place a runtime is chosen.
    ``inputs``: the Python objects given to :func:`asyncrl.train` (``TaskInputs``), or None."""
    if cfg.runtime.name == "ray":
        from asyncrl.runtime.ray_host import RayHost

        return RayHost(cfg, policy_path, ref_path, inputs)
    if cfg.asynchrony.workers == "inline":
        return InlineHost(cfg, policy_path, ref_path, inputs)
    return LocalHost(cfg.asynchrony.workers, cfg, policy_path, ref_path, gen_threads, inputs)


class Controller:
    def __init__(self, cfg: Config, run_dir: Path, task=None, inputs=None):
        """``task``: the task already built from ``cfg`` (the CLI builds it to check the run before
        its folder exists); None = build it here. ``inputs``: the Python objects given to
        :func:`asyncrl.train` (:class:`asyncrl.tasks.TaskInputs`), for generators to build it from."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self._task = task
        self.inputs = inputs if inputs is not None and not inputs.empty else None
        self._stop_requested = False
        self.stop_signal: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run
        # Tests and the Ray learner actor look at these while a run is going.
        self.host: Host | None = None
        self.scheduler: Scheduler | None = None
        self.workers: dict[int, Worker] = {}

    def request_stop(self, signame: str | None = None) -> None:
        """Finish the current step, write a final checkpoint and return (what Ctrl-C does);
        ``signame`` ("SIGINT" / "SIGTERM") is the signal that asked, for the summary and exit code."""
        self._stop_requested = True
        if signame is not None and self.stop_signal is None:
            self.stop_signal = signame

    # --- Ctrl-C / SIGTERM: the first finishes the current step, saves and exits; a second aborts ---
    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name
        if self._stop_requested:
            raise RunAborted(name)
        self._stop_requested = True
        self.stop_signal = name
        print(f"\n{name}: stopping after this step and writing a final checkpoint "
              f"(send it again to abort without saving)", flush=True)

    def run(self) -> dict:
        """Train; returns the summary (also written to ``summary.json``).

        A failure before the first training step (bad model, missing package, a worker that
        cannot start) removes what this call wrote to the run folder, and the folder itself when
        this call created it, then re-raises."""
        run_dir = self.run_dir
        fresh = not run_dir.exists()
        before = set(run_dir.iterdir()) if run_dir.is_dir() else set()
        in_main = threading.current_thread() is threading.main_thread()
        handlers = {}
        if in_main:  # the handlers stay until run() returns: a signal during the final save is a 2nd press
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        self._trained = False
        self._logger: RunLogger | None = None
        try:
            return self._run()
        except BaseException:
            if self._logger is not None:  # before the clean-up below: wandb writes into the run folder
                self._logger.close(failed=True)
            if not self._trained and not self.cfg.resume:
                if fresh:
                    shutil.rmtree(run_dir, ignore_errors=True)
                elif run_dir.is_dir():
                    for name in RUN_FILES:
                        path = run_dir / name
                        if path.exists() and path not in before:
                            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
            raise
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def _run(self) -> dict:
        cfg = self.cfg
        t_setup = time.perf_counter()
        # First, so a bad task setting (missing data, unimportable reward) or a missing engine
        # package fails before anything is written.
        task = self._task if self._task is not None else make_task(cfg, self.inputs)
        if "vllm" in (cfg.engine.name, cfg.engine.eval_engine):
            require_vllm()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        learner_threads, gen_threads = default_threads(cfg)
        torch.set_num_threads(learner_threads)
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        base_path = resolve_model_path(cfg.model, cfg.task.name)
        policy_path, trainer_state = base_path, None
        if cfg.resume:
            ckpt = find_checkpoint(cfg.resume)
            policy_path, trainer_state = str(ckpt), load_trainer_state(ckpt)
        tokenizer = load_tokenizer(policy_path)
        # fp32 master weights; bf16 autocast on GPU. With LoRA: base + adapter (resumed from policy_path's).
        model = load_policy(cfg, policy_path, device, TRAIN_DTYPE)
        # The reference is always the *initial* policy, also after a resume; with LoRA that is the
        # learner's own model with the adapter disabled (no second copy).
        ref = None
        if cfg.loss.reference and cfg.loss.reference_on == "learner":
            ref = ReferenceView(model) if cfg.lora else load_model(base_path, device)
        learner = Learner(cfg, model, ref, tokenizer.pad_token_id, device)
        # Tasks that report kl_ref / ref_perplexity (wants_kl) evaluate against the initial policy (or
        # reference_model); loaded at the first evaluation, reusing the learner's copy when it has one.
        wants_kl = bool(getattr(task, "wants_kl", False))
        reference_model = getattr(cfg.task, "reference_model", None)  # only tasks with wants_kl have it
        eval_ref_path = resolve_model_path(reference_model, cfg.task.name) if reference_model else base_path
        eval_ref = ref if (wants_kl and ref is not None and not reference_model) else None
        if wants_kl and cfg.lora and not reference_model:
            eval_ref = ReferenceView(model)
        eval_engine_name = cfg.engine.eval_engine or cfg.engine.name
        eval_engine = None  # built at the first evaluation when it is not the learner's own model
        # Run totals (carried over by a resume); `run` below counts this process's part only.
        counters = {"samples_seen": 0, "dropped": 0, "reward_errors": 0, "generator_restarts": 0,
                    "requests_redispatched": 0, "skipped_updates": 0}
        buffer = make_buffer(
            cfg.buffer.name, max_lag=cfg.asynchrony.max_lag, group_size=cfg.batch.samples_per_prompt, seed=cfg.seed,
            **cfg.buffer.model_dump(exclude={"name"}),  # the tba settings (none for fifo)
        )
        resumed_gen_states: list[GeneratorState | None] = []  # per generator slot, from the checkpoint
        wall0 = 0.0  # training wall-clock before this process (a resume continues the clock)
        if trainer_state is not None:
            learner.load_state_dict(trainer_state["learner"])
            counters.update(trainer_state.get("counters", {}))
            if trainer_state.get("buffer", {}).get("kind") == cfg.buffer.name:
                buffer.load_state_dict(trainer_state["buffer"])
            resumed_gen_states = [GeneratorState(**g) if g is not None else None
                                  for g in trainer_state.get("generators", [])]
            wall0 = float(trainer_state.get("wall_time_s", 0.0))
        start_version = learner.version  # the version of policy_path's weights
        run = {"generated": 0, "discarded": 0, "restarts": 0, "seen0": counters["samples_seen"],
               "redispatched0": counters["requests_redispatched"], "restored": len(buffer), "sync_bytes": 0}
        host = self.host = make_host(cfg, policy_path, base_path, gen_threads, self.inputs)
        sched = self.scheduler = Scheduler(cfg.asynchrony.max_lag, cfg.batch.prompts_per_step, host.depth)
        logger = self._logger = RunLogger(self.run_dir, cfg.steps, learner.version,
                                          resume=trainer_state is not None, cfg=cfg)
        config_yaml = yaml.safe_dump(cfg.model_dump(), sort_keys=False)

        interrupted = False
        failure: str | None = None  # why the run stopped early (restarts, non-finite updates, a user error)
        totals = {"gen_time_s": 0.0, "score_time_s": 0.0, "gen_tokens": 0, "train_time_s": 0.0, "wait_time_s": 0.0,
                  "sync_time_s": 0.0, "eval_time_s": 0.0, "weight_load_s": 0.0, "sync_bytes": 0}
        step = learner.version
        t0 = time.perf_counter()
        eval_s = 0.0
        setup_s = 0.0
        end_wall: float | None = None
        slot_of: dict[int, int] = {}  # worker id -> generator slot (a replacement takes the lost one's)
        gen_states: dict[int, GeneratorState] = {}  # slot -> generator state after its last trained request
        skipped_in_a_row = 0
        last_save_t = time.perf_counter()
        latest: WeightsUpdate | None = None  # what a (re)started worker is sent before any request
        pending_stats: list = []  # GenStats of replies accepted since the last learner step
        ready: set[int] = set()  # workers that reported ready and take requests
        started = False  # every initial worker was ready once; failures before that are not restarted
        next_worker_id = 0

        def wall() -> float:  # evaluation pauses the clock: it is not part of training
            if end_wall is not None:
                return end_wall
            return wall0 + time.perf_counter() - t0 - eval_s

        def checkpoint(step: int):
            nonlocal last_save_t
            state = {"learner": learner.state_dict(), "counters": counters, "buffer": buffer.state_dict(),
                     "generators": [gen_states[i].to_dict() if i in gen_states else None
                                    for i in range(cfg.asynchrony.num_generators)],
                     "rng": rng_state(), "wall_time_s": wall()}
            path = save_checkpoint(self.run_dir, step, learner.model, tokenizer, state, config_yaml,
                                   keep=cfg.checkpoint.keep_checkpoints, protect=Path(policy_path),
                                   save_merged=bool(cfg.lora and cfg.lora.save_merged))
            last_save_t = time.perf_counter()
            return path

        eval_history: list[dict] = []  # this process's evaluations, for the summary

        def run_eval(step: int) -> float | None:
            nonlocal eval_s, eval_ref, eval_engine
            w = wall()  # the training time at which this evaluation's weights were reached
            te = time.perf_counter()
            if wants_kl and eval_ref is None:
                eval_ref = load_model(eval_ref_path, device).eval().requires_grad_(False)
            engine = None  # hf: evaluate the learner's own model, no copy
            if eval_engine_name != "hf":
                if eval_engine is None:
                    # It holds policy_path's weights: those of the version this process started at,
                    # not necessarily the current one (a resumed run's first evaluation comes later).
                    eval_engine = make_engine(cfg, policy_path, tokenizer, name=eval_engine_name, temperature=1.0,
                                              seed=cfg.seed, version=start_version)
                if eval_engine.version != learner.version:
                    eval_engine.load_weights(learner.weights(), learner.version)
                engine = eval_engine
            with autocast(device):
                metrics, rows = evaluate(learner.model, tokenizer, task, max_new_tokens=cfg.sampling.max_new_tokens,
                                         limit=cfg.evaluation.eval_limit, chat_template=cfg.chat_template, ref_model=eval_ref,
                                         length_penalty=cfg.rewards.length_penalty, missing_eos_penalty=cfg.rewards.missing_eos_penalty,
                                         engine=engine)
            dt = time.perf_counter() - te
            logger.log_eval({"step": step, "wall_time_s": w, **metrics, "n": len(rows),
                             "eval_time_s": dt}, rows[: cfg.evaluation.eval_log_generations])
            eval_s += dt
            eval_history.append({"step": step, **metrics})
            return metrics.get("accuracy")

        def publish() -> float:
            nonlocal latest
            ts = time.perf_counter()
            state = learner.weights()
            # Bytes a transport moves for this publish (the adapter only, with LoRA).
            run["sync_bytes"] = distinct_bytes(state)
            totals["sync_bytes"] += run["sync_bytes"]
            latest = host.publisher.publish(state, learner.version)
            for wid in ready:
                self.workers[wid].send(latest)
            return time.perf_counter() - ts

        def start_worker(slot: int) -> None:
            nonlocal next_worker_id
            wid, next_worker_id = next_worker_id, next_worker_id + 1
            slot_of[wid] = slot
            self.workers[wid] = host.start(wid, learner.version)

        def replace(wid: int, reason: str) -> None:
            """A worker died or raised: re-dispatch its requests and start a fresh one."""
            nonlocal failure
            if wid not in self.workers:
                return  # already replaced (e.g. a WorkerLost after its WorkerError)
            lost = sched.remove_worker(wid)
            self.workers.pop(wid).kill()
            forget = getattr(host.publisher, "remove_worker", None)  # broadcast: leave it out of the group
            if forget is not None:
                forget(wid)
            ready.discard(wid)
            counters["generator_restarts"] += 1
            run["restarts"] += 1  # the limit is per run: a resumed run starts over
            logger.progress.note(f"generator {wid} lost ({reason.strip().splitlines()[-1]}); "
                                 f"{len(lost)} request(s) to re-dispatch, starting a replacement")
            if run["restarts"] > cfg.asynchrony.max_generator_restarts:
                failure = (f"generator workers failed {run['restarts']} times, more than "
                           f"max_generator_restarts={cfg.asynchrony.max_generator_restarts}; last: "
                           f"{reason.strip().splitlines()[-1]}")
                return
            start_worker(slot_of[wid])

        def handle(msg) -> None:
            if isinstance(msg, RequestDone):
                run["generated"] += msg.samples
                if not sched.complete(msg.worker_id, msg.request_id, msg):
                    run["discarded"] += msg.samples  # a late or second reply: never trained twice
                    counters["dropped"] += msg.samples
                    return
                pending_stats.append(msg.stats)
                totals["gen_time_s"] += msg.stats.gen_time_s
                totals["score_time_s"] += msg.stats.score_time_s
                totals["gen_tokens"] += msg.stats.tokens
                totals["weight_load_s"] += msg.weight_load_s
                counters["reward_errors"] += msg.stats.reward_errors
            elif isinstance(msg, WorkerReady):
                if msg.worker_id not in self.workers:
                    return
                ready.add(msg.worker_id)
                slot = slot_of[msg.worker_id]
                if not started and slot < len(resumed_gen_states) and resumed_gen_states[slot] is not None:
                    # A resumed run's first workers continue their slot's prompt stream and RNG.
                    self.workers[msg.worker_id].send(RestoreGenerator(resumed_gen_states[slot]))
                if latest is not None:
                    self.workers[msg.worker_id].send(latest)
                sched.add_worker(msg.worker_id)
            elif isinstance(msg, WorkerError) and msg.user_error:
                raise RunFailed(msg.message)
            elif isinstance(msg, (WorkerError, WorkerLost)):
                if not started:
                    # Failing before the run even started (bad model, missing package): no restart loop.
                    raise RunFailed(f"generator {msg.worker_id} failed to start:\n"
                                    f"{msg.message if isinstance(msg, WorkerError) else msg.reason}")
                replace(msg.worker_id, msg.message if isinstance(msg, WorkerError) else msg.reason)

        try:
            for slot in range(cfg.asynchrony.num_generators):
                start_worker(slot)
            while len(ready) < cfg.asynchrony.num_generators:
                msg = host.next_message(POLL_S)
                if msg is not None:
                    handle(msg)
                if self._stop_requested:
                    raise KeyboardInterrupt
            if trainer_state is not None and "rng" in trainer_state:
                # After the workers are built: building an inline generator seeds this process.
                set_rng_state(trainer_state["rng"])
            started = True
            setup_s = time.perf_counter() - t_setup
            t0 = time.perf_counter()
            totals["sync_time_s"] += publish()
            published = step
            if step == 0:
                run_eval(0)
            self._trained = True  # from here on a failure keeps the run folder and checkpoints
            while step < cfg.steps and not self._stop_requested and failure is None:
                for wid, req in sched.dispatch(step, published):
                    self.workers[wid].send(req)
                tw = time.perf_counter()
                taken = sched.take(step)
                while taken is None and not self._stop_requested and failure is None:
                    msg = host.next_message(POLL_S)
                    if msg is not None:
                        handle(msg)
                        if not isinstance(msg, RequestDone):
                            # The workers changed (one lost, a replacement ready): re-dispatch now.
                            # A reply alone waits for the next step's dispatch, as before this
                            # scheduler existed: dispatching into the slot a reply frees would make
                            # one generator run max_lag ahead instead of one request (the default
                            # job's staleness 1 would become 2).
                            for wid, req in sched.dispatch(step, published):
                                self.workers[wid].send(req)
                    taken = sched.take(step)
                if taken is None:
                    break
                wait_s = time.perf_counter() - tw
                done = taken[1]
                groups = done.groups
                if done.generator_state is not None:
                    gen_states[slot_of[done.worker_id]] = done.generator_state
                buffer.add(groups)
                batch = buffer.sample(cfg.batch.prompts_per_step, learner_version=step)
                counters["dropped"] += batch.dropped if batch is not None else 0
                if batch is None:
                    continue
                m = learner.step(batch)
                step = learner.version
                skipped = m.pop("skipped_update")
                counters["skipped_updates"] += int(skipped)
                skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
                if skipped:
                    logger.progress.note(f"step {step}: non-finite loss or gradient norm (loss {m['loss']}, "
                                         f"grad_norm {m['grad_norm']}); update skipped "
                                         f"({skipped_in_a_row} in a row)")
                if skipped_in_a_row >= cfg.optimizer.max_skipped_updates:
                    failure = (f"{skipped_in_a_row} updates in a row had a non-finite loss or gradient norm "
                               f"(max_skipped_updates={cfg.optimizer.max_skipped_updates}); the weights are those of the "
                               f"last finite update")
                sync_s, sync_bytes = 0.0, 0
                if step % cfg.asynchrony.sync_every == 0:
                    sync_s = publish()
                    sync_bytes = run["sync_bytes"]
                    published = step
                counters["samples_seen"] += sum(len(g.samples) for g in batch.groups)
                counters["requests_redispatched"] = run["redispatched0"] + sched.stats.redispatched
                gen_t = sum(s.gen_time_s for s in pending_stats)
                gen_tok = sum(s.tokens for s in pending_stats)
                fresh = [s.reward for g in groups for s in g.samples]
                # Each reward function's mean over the fresh samples (custom task; TRL's rewards/<name>/mean).
                parts: dict[str, list[float]] = {}
                for st in pending_stats:
                    for name, (total, count) in st.reward_components.items():
                        acc = parts.setdefault(name, [0.0, 0])
                        acc[0] += total
                        acc[1] += count
                reward_parts = {f"rewards/{k}/mean": (a / n if n else float("nan")) for k, (a, n) in parts.items()}
                pending_stats.clear()
                totals["train_time_s"] += m["train_time_s"]
                totals["wait_time_s"] += wait_s
                totals["sync_time_s"] += sync_s
                rewards = [s.reward for g in batch.groups for s in g.samples]
                row = {
                    "step": step,
                    "wall_time_s": wall(),
                    "samples_seen": counters["samples_seen"],
                    "reward_mean": sum(rewards) / len(rewards),
                    # NaN (null in metrics.jsonl) when reward_errors=skip dropped every group of the request
                    "fresh_reward_mean": sum(fresh) / len(fresh) if fresh else float("nan"),
                    **reward_parts,
                    "loss": m.pop("loss"),
                    "kl": m.pop("kl"),
                    "staleness_mean": batch.staleness_mean,
                    "staleness_max": batch.staleness_max,
                    "dropped_total": counters["dropped"],
                    "reward_errors_total": counters["reward_errors"],
                    "generator_restarts_total": counters["generator_restarts"],
                    "requests_redispatched_total": counters["requests_redispatched"],
                    "skipped_update": int(skipped),
                    "skipped_updates_total": counters["skipped_updates"],
                    "gen_tokens_per_s": gen_tok / gen_t if gen_t > 0 else 0.0,
                    "learner_tokens_per_s": m.pop("learner_tokens_per_s"),
                    "sync_time_s": sync_s,
                    "sync_bytes": sync_bytes,
                    "wait_time_s": wait_s,
                    **m,
                    **{f"buffer/{k}": v for k, v in buffer.stats().items()},
                }
                logger.log_step(row)
                if cfg.evaluation.eval_every and step % cfg.evaluation.eval_every == 0 and step < cfg.steps:
                    run_eval(step)
                due = (cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0) or (
                    cfg.checkpoint.save_every_minutes and time.perf_counter() - last_save_t >= 60 * cfg.checkpoint.save_every_minutes)
                if due and step < cfg.steps and failure is None:
                    checkpoint(step)
        except KeyboardInterrupt:  # Ctrl-C before the handler was installed, or off the main thread
            interrupted = True
        except (RunFailed, RewardError) as e:
            if not self._trained:
                raise  # nothing trained yet: no checkpoint, the run folder goes (see run())
            failure = str(e)  # between steps: the state is consistent, so the final checkpoint is written
        finally:
            end_wall = wall()  # training ends here; stopping workers is teardown
            host.close()
            host.publisher.close()
        interrupted = interrupted or self._stop_requested
        counters["requests_redispatched"] = run["redispatched0"] + sched.stats.redispatched
        # Replies completed but never trained on (the run ended first) count as dropped.
        unconsumed = sum(r.samples for r in sched.unconsumed())
        final_acc = None
        try:
            if not interrupted and failure is None:
                final_acc = run_eval(step)
        finally:
            if eval_engine is not None:
                eval_engine.close()
        ckpt = checkpoint(step)
        logger.close()
        totals["eval_time_s"] = eval_s
        buffer_stats = buffer.stats()
        summary = {
            "steps": step,
            "interrupted": interrupted,
            "signal": self.stop_signal,
            "failed": failure,
            "final_accuracy": final_acc,
            "wall_time_s": end_wall,
            "setup_time_s": setup_s,
            "samples_seen": counters["samples_seen"],
            "dropped": counters["dropped"],
            "reward_errors": counters["reward_errors"],
            "generator_restarts": counters["generator_restarts"],
            "requests_redispatched": counters["requests_redispatched"],
            "skipped_updates": counters["skipped_updates"],
            # This process's samples (a resumed run counts from the resume, and its buffer's
            # restored samples as generated). fifo: generated = trained + in_buffer + dropped. tba
            # replays, so there generated = in_buffer + evicted + dropped, and trained counts
            # draws. dropped = too stale + late/duplicate replies + replies the run ended before
            # training on.
            "accounting": {
                "samples_generated": run["generated"] + run["restored"],
                "samples_restored": run["restored"],
                "samples_trained": counters["samples_seen"] - run["seen0"],
                "samples_in_buffer": len(buffer),
                "samples_dropped": int(buffer_stats.get("dropped", 0)) + run["discarded"] + unconsumed,
                "samples_evicted": int(sum(buffer_stats.get(k, 0) for k in ("evicted", "evicted_prompt_cap",
                                                                             "duplicates"))),
                "requests": {"dispatched": sched.stats.dispatched, "completed": sched.stats.completed,
                             "taken": sched.stats.taken, "discarded": sched.stats.discarded,
                             "taken_out_of_order": sched.stats.taken_out_of_order,
                             "unconsumed": len(sched.unconsumed())},
            },
            "checkpoint": str(ckpt),
            "run_dir": str(self.run_dir),
            # every evaluation this process ran (step 0 / the resume step, each eval_every, the end)
            "eval_history": [{k: (None if isinstance(v, float) and v != v else v) for k, v in e.items()}
                             for e in eval_history],
            **totals,
        }
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
