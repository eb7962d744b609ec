"""The controller: one training loop for every runtime (local inline/thread/process, Ray).

A run is four methods, read top to bottom (the parts they call have their own modules and tests):

1. ``_setup``: the task, learner, replay buffer, a resume's state (``RunStats``, the generators'
   states, the training clock), a ``Host`` for the generators (``make_host``), the ``Scheduler``,
   the ``WorkerPool``, the ``Evaluator`` and the ``CheckpointCadence``;
2. ``_start``: start ``num_generators`` workers and wait until each is ready, publish the initial
   weights, evaluate at step 0;
3. ``_train``: until ``steps``: send what the scheduler's lag gate allows, wait for a completed
   request (any completion order the bound allows) while the pool handles worker messages
   (replies; lost workers replaced in their slot and sent the latest weights, their requests
   re-dispatched), ``_admit`` its groups to the buffer, take ``_next_batch`` and ``_learn``: train
   on it, publish weights every ``sync_every`` steps, log one metrics row
   (``metrics_row.step_row``), evaluate / checkpoint on cadence. ``generation: continuous``
   (``_train_continuous``) admits every reply as it arrives and keeps dispatching up to the
   ``ContinuousScheduler``'s production bound, and each step samples the buffer;
4. ``_finish``: (after the pool stopped the workers) final evaluation, final checkpoint,
   ``summary.json`` (``summary.build_summary``).

The parts: ``stats.RunStats`` (every count and time total; the checkpoint's ``counters``),
``pool.WorkerPool`` (workers, slots, replies, restarts, publishing), ``evaluator.Evaluator`` and
``evaluator.TrainClock`` (evaluation pauses the training clock), ``metrics_row``,
``cadence.CheckpointCadence``, ``summary``; Ctrl-C / SIGTERM go through ``asyncrl.signals``.

Checkpoints (``checkpoint.py``) hold everything a resume needs to continue exactly: weights,
optimizer, LR schedule, counters, the replay buffer, every random state and each generator's
prompt-stream position; they are written every ``save_every`` steps / ``save_every_minutes``, on
Ctrl-C and SIGTERM, and when the run stops on an error between steps. A run that fails before its
first step leaves no run folder behind. See docs/reliability.md.

The scheduler owns the bound (see ``scheduler.py``); the host owns where workers run
(``hosts.py``, ``ray_host.py``); the weight transport owns how weights travel (``transport.py``).
A run changes neither the caller's torch thread count nor its global random states: ``run()``
puts both back when it returns.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from asyncrl.buffer import make_buffer
from asyncrl.checkpoint import (find_checkpoint, list_checkpoints, load_trainer_state, rng_state, save_checkpoint,
                               set_rng_state)
from asyncrl.config import Config, save_config
from asyncrl.io import RUN_ENTRIES as RUN_FILES, atomic_write_text  # RUN_FILES: a run failing before training removes them
from asyncrl.learner import Learner, load_learner_models
from asyncrl.metrics import RunLogger
from asyncrl.engines.vllm import require_vllm
from asyncrl.errors import LearnerFailed, RunAborted, RunFailed  # noqa: F401 - RunAborted: re-exported
from asyncrl.policy import resolve_device, resolve_model_path
from asyncrl.runtime.cadence import CheckpointCadence
from asyncrl.runtime.dynamic_sampling import DynamicSampler
from asyncrl.runtime.evaluator import Evaluator, TrainClock
from asyncrl.runtime.hosts import Host, InlineHost, LocalHost, Worker
from asyncrl.runtime.learner_ranks import start_sharded_learner
from asyncrl.runtime.ray_host import RayHost  # imports no Ray until a RayHost is made
from asyncrl.runtime.messages import FromWorker, GeneratorState, RequestDone
from asyncrl.runtime.metrics_row import step_row, token_staleness
from asyncrl.runtime.pool import WorkerPool
from asyncrl.runtime.scheduler import ContinuousScheduler, Scheduler
from asyncrl.runtime.stats import RunStats
from asyncrl.runtime.summary import build_summary
from asyncrl.runtime.worker import default_threads
from asyncrl.signals import stop_on_signals
from asyncrl.envs import make_task
from asyncrl.tasks.base import RewardError

POLL_S = 0.05  # how long to wait for a worker message before re-checking stop requests


def make_host(cfg: Config, policy_path: str, ref_path: str, gen_threads: int, inputs=None) -> Host:
    """The host for ``cfg.runtime.name`` / ``cfg.asynchrony.workers``: the one place a runtime is chosen.
    ``inputs``: the Python objects given to :func:`asyncrl.train` (``TaskInputs``), or None."""
    if cfg.runtime.name == "ray":
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
        self.workers: dict[int, Worker] = {}  # the pool's own dict once the run is set up

    def request_stop(self, signame: str | None = None) -> None:
        """Finish the current step, write a final checkpoint and return (what Ctrl-C does);
        ``signame`` ("SIGINT" / "SIGTERM") is the signal that asked, for the summary and exit code."""
        self._stop_requested = True
        if signame is not None and self.stop_signal is None:
            self.stop_signal = signame

    def run(self) -> dict:
        """Train; returns the summary (also written to ``summary.json``).

        A failure before the first training step (bad model, missing package, a worker that
        cannot start) removes what this call wrote to the run folder, and the folder itself when
        this call created it, then re-raises. The caller's torch thread count and global random
        states are put back on return (the run sets both for the learner)."""
        fresh = not self.run_dir.exists()
        before = set(self.run_dir.iterdir()) if self.run_dir.is_dir() else set()
        # The run seeds torch and sets the learner's thread count for itself; the caller gets its own
        # back. Restoring happens after the final checkpoint (which saved the run's random state),
        # so it changes nothing the run computed or wrote.
        threads, rng = torch.get_num_threads(), rng_state()
        self._trained = False
        self._logger: RunLogger | None = None
        # The handlers stay until run() returns: a signal during the final save is a 2nd press.
        with stop_on_signals(self.request_stop):
            try:
                return self._run()
            except BaseException:
                if self._logger is not None:  # before the clean-up below: wandb writes into the run folder
                    self._logger.close(failed=True)
                if not self._trained and not self.cfg.resume:
                    self._remove_run_files(fresh, before)
                raise
            finally:
                learner = getattr(self, "_learner", None)
                if learner is not None and getattr(learner, "sharded", False):
                    learner.close()  # the other ranks exit, the process group goes
                torch.set_num_threads(threads)
                set_rng_state(rng)

    def _remove_run_files(self, fresh: bool, before: set[Path]) -> None:
        """Remove what this run wrote (the folder too when it made it)."""
        if fresh:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        for name in RUN_FILES:
            path = self.run_dir / name
            if path.exists() and path not in before:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()

    def _run(self) -> dict:
        self._setup()
        interrupted = False
        try:
            self._start()
            self._train()
        except KeyboardInterrupt:  # Ctrl-C before the handler was installed, or off the main thread
            interrupted = True
        except (RunFailed, RewardError) as e:
            if not self._trained:
                raise  # nothing trained yet: no checkpoint, the run folder goes (see run())
            if isinstance(e, LearnerFailed):
                # A failed learner rank: its state cannot be gathered for a final checkpoint.
                kept = list_checkpoints(self.run_dir)
                raise LearnerFailed(f"{e}; no final checkpoint, the last one is "
                                    f"{kept[-1] if kept else 'none (none was due yet)'}") from e
            self._failure = str(e)  # between steps: the state is consistent, so the final checkpoint is written
        finally:
            self._clock.stop()  # training ends here; stopping workers is teardown
            self._pool.close()
        return self._finish(interrupted or self._stop_requested)

    # --- set-up ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Everything before the first worker starts."""
        cfg = self.cfg
        self._t_setup = time.perf_counter()
        # First, so a bad task setting (missing data, unimportable reward) or a missing engine
        # package fails before anything is written.
        task = self._task if self._task is not None else make_task(cfg, self.inputs)
        if "vllm" in (cfg.engine.name, cfg.engine.eval_engine):
            require_vllm()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        learner_threads, gen_threads = default_threads(cfg)
        learner_threads = max(1, learner_threads // cfg.learner.ranks)  # each rank a share of the cores
        torch.set_num_threads(learner_threads)
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        base_path = resolve_model_path(cfg.model, cfg.task.name)
        self._policy_path, self._trainer_state = base_path, None
        if cfg.resume:
            ckpt = find_checkpoint(cfg.resume)
            self._policy_path, self._trainer_state = str(ckpt), load_trainer_state(ckpt)
        self._learner, self._tokenizer = self._load_learner(device, base_path, learner_threads)
        # The buffer measures staleness in versions (optimizer steps); max_lag counts learner steps.
        lag_versions = cfg.asynchrony.max_lag * cfg.updates_per_step
        continuous_tba = cfg.generation.name == "continuous" and cfg.buffer.name == "tba"
        self._buffer = make_buffer(
            cfg.buffer.name, max_lag=lag_versions, group_size=cfg.batch.samples_per_prompt,
            seed=cfg.seed,
            # continuous: tba's freshest sample is at most max_lag behind (the learner waits for it)
            newest_lag=lag_versions if continuous_tba else None,
            **cfg.buffer.model_dump(exclude={"name"}),  # the tba settings (none for fifo)
        )
        self._stats, resumed_states, wall0 = self._restore()
        self.host = make_host(cfg, self._policy_path, base_path, gen_threads, self.inputs)
        self.scheduler = self._make_scheduler()
        self._logger = RunLogger(self.run_dir, cfg.steps, self._learner.steps_done,
                                 resume=self._trainer_state is not None, cfg=cfg)
        self._config_yaml = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
        self._pool = WorkerPool(self.host, self.scheduler, self._stats, num_generators=cfg.asynchrony.num_generators,
                                max_restarts=cfg.asynchrony.max_generator_restarts, version=lambda: self._learner.version,
                                note=self._logger.progress.note, resumed_states=resumed_states)
        self.workers = self._pool.workers
        self._clock = TrainClock(wall0)
        b = cfg.batch
        self._dynamic = DynamicSampler(b.prompts_per_step, b.dynamic_sampling_attempts, b.mini_batches) \
            if b.dynamic_sampling else None
        self._cadence = CheckpointCadence(cfg.checkpoint.save_every, cfg.checkpoint.save_every_minutes, cfg.steps)
        self._evaluator = Evaluator(cfg, task, self._learner, self._tokenizer, device, policy_path=self._policy_path,
                                    base_path=base_path, logger=self._logger, clock=self._clock)
        self._failure: str | None = None  # why the run stopped early (non-finite updates, a user error)
        self._skipped_in_a_row = 0
        self._published = self._learner.steps_done  # the learner step whose weights the workers were last sent
        self._last_row = (0, 0.0)  # (samples generated, training wall seconds) at the previous metrics row; _start sets it
        self._setup_s = 0.0  # set-up seconds, once every worker is ready

    def _make_scheduler(self) -> Scheduler:
        """The lag-gated scheduler, or the production-bounded one of ``generation: continuous``."""
        cfg = self.cfg
        if cfg.generation.name == "continuous":
            return ContinuousScheduler(cfg.batch.prompts_per_step, cfg.request_samples, cfg.samples_ahead_bound,
                                       self.host.depth)
        return Scheduler(cfg.asynchrony.max_lag, cfg.batch.prompts_per_step, self.host.depth)

    def _load_learner(self, device, base_path: str, threads: int) -> tuple[Learner, object]:
        """The learner (and the tokenizer) from ``self._policy_path`` (a resume's checkpoint); with
        ``learner_ranks > 1`` rank 0's side of the sharded learner (``learner_ranks.py``)."""
        cfg = self.cfg
        if cfg.learner.ranks > 1:
            return start_sharded_learner(cfg, self._policy_path, base_path, threads)
        model, ref, tokenizer = load_learner_models(cfg, self._policy_path, base_path, device)
        return Learner(cfg, model, ref, tokenizer.pad_token_id, device), tokenizer

    def _restore(self) -> tuple[RunStats, list[GeneratorState | None], float]:
        """A resume's learner and buffer state; returns the run statistics, the generator state
        per slot and the training seconds before this process (a fresh run: zeros, [], 0)."""
        state = self._trainer_state
        if state is None:
            return RunStats.resumed(), [], 0.0
        self._learner.load_state_dict(state["learner"])
        if state.get("buffer", {}).get("kind") == self.cfg.buffer.name:
            self._buffer.load_state_dict(state["buffer"])
        generators = [GeneratorState(**g) if g is not None else None for g in state.get("generators", [])]
        stats = RunStats.resumed(state.get("counters", {}), restored=len(self._buffer))
        stats.buffer_at_start = dict(self._buffer.stats())  # its counters are run totals
        return stats, generators, float(state.get("wall_time_s", 0.0))

    # --- start: workers ready, initial weights, step-0 evaluation ----------------------------------
    def _start(self) -> None:
        self._pool.start()
        while not self._pool.all_ready():
            self._poll()
            if self._stop_requested:
                raise KeyboardInterrupt
        if self._trainer_state is not None and "rng" in self._trainer_state:
            # The learner's random state as saved (generators keep their own: GeneratorState.rng).
            set_rng_state(self._trainer_state["rng"])
        self._pool.started = True
        self._setup_s = time.perf_counter() - self._t_setup
        self._clock.restart()
        self._last_row = (self._stats.generated, self._clock.wall())
        self._stats.sync_time_s += self._publish()
        if self._learner.steps_done == 0:
            self._evaluator.run(0)
        self._trained = True  # from here on a failure keeps the run folder and checkpoints

    # --- the loop ----------------------------------------------------------------------------------
    @property
    def failure(self) -> str | None:
        """Why the run stops early: too many worker losses, non-finite updates, a user error."""
        return self._failure or self._pool.failure

    def _running(self) -> bool:
        return not self._stop_requested and self.failure is None

    def _train(self) -> None:
        if isinstance(self.scheduler, ContinuousScheduler):
            return self._train_continuous()
        while self._learner.steps_done < self.cfg.steps and self._running():
            self._pool.dispatch(self._learner.steps_done, self._published)
            tw = time.perf_counter()
            done = self._wait_for_request()
            if done is None:
                break
            self._admit(done)
            batch = self._next_batch()
            if batch is not None:
                self._learn(batch, done.groups, wait_s=time.perf_counter() - tw)

    def _train_continuous(self) -> None:
        """``generation: continuous``: replies go into the buffer as they arrive, generators keep
        going up to the production bound, and each step samples its batch from the buffer."""
        fresh: list = []  # the groups admitted since the previous step
        initial = self.cfg.generation.initial_buffer_samples  # the first step of this process waits for it
        while self._learner.steps_done < self.cfg.steps and self._running():
            tw = time.perf_counter()
            batch = self._wait_for_batch(fresh, initial)
            if batch is None:
                break
            self._learn(batch, fresh, wait_s=time.perf_counter() - tw)
            fresh, initial = [], 0

    def _poll(self) -> FromWorker | None:
        """Handle the next worker message, if one comes within ``POLL_S``."""
        msg = self.host.next_message(POLL_S)
        if msg is not None:
            self._pool.handle(msg)
        return msg

    def _wait_for_request(self) -> RequestDone | None:
        """The completed request to train on next; None when the run stops first."""
        step = self._learner.steps_done
        taken = self.scheduler.take(step)
        while taken is None and self._running():
            msg = self._poll()
            if msg is not None and not isinstance(msg, RequestDone):
                # The workers changed (one lost, a replacement ready): re-dispatch now. A reply
                # alone waits for the next step's dispatch, as before this scheduler existed:
                # dispatching into the slot a reply frees would make one generator run max_lag
                # ahead instead of one request (the default job's staleness 1 would become 2).
                self._pool.dispatch(step, self._published)
            taken = self.scheduler.take(step)
        return taken[1] if taken is not None else None

    def _wait_for_batch(self, fresh: list, initial: int):
        """Continuous: admit replies as they arrive (their groups appended to ``fresh``), keep the
        generators going up to the bound, and return a batch once the buffer holds ``initial``
        samples and has one; None when the run stops first."""
        step, tried = self._learner.steps_done, False
        while self._running():
            buffer_dropped = int(self._buffer.stats().get("dropped", 0) - self._stats.buffer_at_start.get("dropped", 0))
            self._pool.dispatch(step, self._published, self._stats.unconsumed_here(buffer_dropped))
            arrived = self.scheduler.take_completed()
            for _, done in arrived:
                self._admit(done)
                fresh.extend(done.groups)
            # Ask the buffer once per arrival (dynamic sampling counts each miss as a request waited for).
            if (arrived or not tried) and len(self._buffer) >= initial:
                tried = True
                batch = self._next_batch()
                if batch is not None:
                    return batch
            self._poll()
        return None

    def _admit(self, done: RequestDone) -> None:
        """``done``'s groups go into the buffer (dynamic sampling holds back the tied ones)."""
        self._pool.record(done)
        dyn = self._dynamic
        self._buffer.add(dyn.admit(done.groups) if dyn is not None else done.groups)
        if dyn is not None:
            self._stats.filtered = self._stats.filtered_at_start + dyn.filtered_here

    def _next_batch(self):
        """The buffer's batch for this step, or None (wait for more generation)."""
        stats, dyn = self._stats, self._dynamic
        if dyn is not None:  # a batch of groups with an advantage, or wait for more generation
            batch = dyn.batch(self._buffer, self._learner.version)
            stats.filtered = stats.filtered_at_start + dyn.filtered_here  # a top-up un-filters
        else:
            batch = self._buffer.sample(self.cfg.batch.prompts_per_step, learner_version=self._learner.version)
        stats.dropped += batch.dropped if batch is not None else 0
        return batch

    def _learn(self, batch, fresh: list, wait_s: float) -> None:
        """Train on ``batch`` (``fresh``: the groups generated for this step); publish on cadence,
        log the metrics row, evaluate and checkpoint on cadence."""
        cfg, stats, dyn = self.cfg, self._stats, self._dynamic
        m = self._learner.step(batch)
        step = self._learner.steps_done
        skipped = m.pop("skipped_update")
        self._count_skipped(step, skipped, m)
        sync_s, sync_bytes = 0.0, 0
        if step % cfg.asynchrony.sync_every == 0:
            sync_s, sync_bytes = self._publish(), stats.last_sync_bytes
        stats.samples_seen += sum(len(g.samples) for g in batch.groups)
        stats.set_redispatched(self.scheduler.stats.redispatched)
        stats.train_time_s += m["train_time_s"]
        stats.wait_time_s += wait_s
        stats.sync_time_s += sync_s
        wall, replies = self._clock.wall(), self._pool.take_pending()
        busy_s = sum(r.gen_time_s + r.score_time_s for r in replies)
        span_s = (wall - self._last_row[1]) * cfg.asynchrony.num_generators
        self._logger.log_step(step_row(
            # Evaluation pauses the training clock while generators may go on: at most 1.
            produced=stats.generated - self._last_row[0],
            generator_busy_share=min(1.0, busy_s / span_s) if span_s > 0 else 0.0,
            step=step, wall_s=wall, stats=stats, batch=batch, fresh=fresh,
            replies=replies, learner_metrics=m, skipped=skipped, sync_s=sync_s,
            episodes=cfg.task.name == "env",
            sync_bytes=sync_bytes, wait_s=wait_s, buffer_stats=self._buffer.stats(),
            extra={**(dyn.row(stats.filtered) if dyn is not None else {}),
                   **(token_staleness(batch) if cfg.engine.vllm.inflight_updates else {})}))
        self._last_row = (stats.generated, self._clock.wall())
        if self._evaluator.due(step):
            self._evaluator.run(step)
        if self._cadence.due(step, failed=self.failure is not None):
            self._checkpoint(step)

    def _count_skipped(self, step: int, skipped: bool, m: dict) -> None:
        """A non-finite update is skipped and counted; ``max_skipped_updates`` in a row stop the run."""
        self._stats.skipped_updates += int(skipped)
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if skipped else 0
        if skipped:
            self._logger.progress.note(f"step {step}: non-finite loss or gradient norm (loss {m['loss']}, "
                                       f"grad_norm {m['grad_norm']}); update skipped "
                                       f"({self._skipped_in_a_row} in a row)")
        if self._skipped_in_a_row >= self.cfg.optimizer.max_skipped_updates:
            self._failure = (f"{self._skipped_in_a_row} updates in a row had a non-finite loss or gradient norm "
                             f"(max_skipped_updates={self.cfg.optimizer.max_skipped_updates}); the weights are those of "
                             f"the last finite update")

    def _publish(self) -> float:
        """Send the learner's current weights to the workers; returns the seconds it took."""
        ts = time.perf_counter()
        self._pool.publish(self._learner.weights(), self._learner.version)
        self._published = self._learner.steps_done  # the scheduler counts learner steps
        return time.perf_counter() - ts

    def _checkpoint(self, step: int) -> Path:
        learner = self._learner
        # Sharded: both calls gather (collectives on every rank); rank 0 writes the folder.
        model_state = learner.full_model_state()
        state = {"learner": learner.state_dict(), "counters": self._stats.counters(),
                 "buffer": self._buffer.state_dict(), "generators": self._pool.generator_states(),
                 "rng": rng_state(), "wall_time_s": self._clock.wall()}
        path = save_checkpoint(self.run_dir, step, learner.model, self._tokenizer, state, self._config_yaml,
                               keep=self.cfg.checkpoint.keep_checkpoints, protect=Path(self._policy_path),
                               save_merged=bool(self.cfg.lora and self.cfg.lora.save_merged),
                               model_state=model_state)
        self._cadence.saved()
        return path

    # --- the end (the workers have stopped) --------------------------------------------------------
    def _finish(self, interrupted: bool) -> dict:
        """Final evaluation (unless stopped or failed), final checkpoint, ``summary.json``."""
        step = self._learner.steps_done
        self._stats.set_redispatched(self.scheduler.stats.redispatched)
        final_acc = None
        try:
            if not interrupted and self.failure is None:
                final_acc = self._evaluator.run(step)
        finally:
            self._evaluator.close()
        ckpt = self._checkpoint(step)
        self._logger.close()
        self._stats.eval_time_s = self._clock.paused_s
        summary = build_summary(
            steps=step, interrupted=interrupted, signal=self.stop_signal, failed=self.failure,
            final_accuracy=final_acc, wall_time_s=self._clock.wall(), setup_time_s=self._setup_s,
            stats=self._stats, scheduler=self.scheduler, buffer_len=len(self._buffer),
            buffer_stats=self._buffer.stats(), checkpoint=str(ckpt), run_dir=str(self.run_dir),
            eval_history=self._evaluator.history)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary
