"""The training loop's parts, each without a model: run statistics, the worker pool (fake host and
workers), the training clock and the evaluator (fake learner and evaluation), the checkpoint
cadence, the metrics row, the summary and the signal helper. The loop that joins them runs end to
end in test_e2e.py, test_resume.py, test_faults.py and test_signals_guards.py."""

from __future__ import annotations

import os
import signal
import threading
from types import SimpleNamespace

import pytest
import torch

from asyncrl.config import Config
from asyncrl.errors import RunAborted, RunFailed
from asyncrl.runtime import evaluator as evaluator_mod
from asyncrl.runtime.cadence import CheckpointCadence
from asyncrl.runtime.evaluator import Evaluator, TrainClock
from asyncrl.runtime.messages import (
    GenerateRequest, GeneratorState, RequestDone, RestoreGenerator, WeightsUpdate, WorkerError, WorkerLost,
    WorkerReady,
)
from asyncrl.runtime.metrics_row import measures_the_clock, reward_parts, step_row
from asyncrl.runtime.pool import WorkerPool
from asyncrl.runtime.scheduler import Scheduler
from asyncrl.runtime.stats import COUNTER_KEYS, TIMING_KEYS, RunStats
from asyncrl.runtime.summary import build_summary
from asyncrl.signals import SignalStop, stop_on_signals
from asyncrl.types import GenStats, Group, Prompt, Sample


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def _group(rewards, version=0):
    prompt = Prompt("p", "q")
    return Group(prompt, [Sample("p", [1], [2], [0.0], r, version, True) for r in rewards])


def _stats(gen=1.0, tokens=10, **kw):
    return GenStats(gen_time_s=gen, score_time_s=0.5, tokens=tokens, version=0, **kw)


# --- RunStats ----------------------------------------------------------------------------------------

# The "counters" dict of a checkpoint written by main 1948c35 (before RunStats): the keys stay.
OLD_COUNTERS = {"samples_seen": 640, "dropped": 3, "reward_errors": 1, "generator_restarts": 2,
                "requests_redispatched": 4, "skipped_updates": 1}


def test_run_stats_round_trip_the_checkpoints_counters():
    stats = RunStats.resumed(OLD_COUNTERS, restored=12)
    # The old keys stay, in their order; keys added since (dynamic sampling's "filtered") start at 0.
    assert stats.counters() == {**OLD_COUNTERS, "filtered": 0}
    assert list(stats.counters())[: len(OLD_COUNTERS)] == list(OLD_COUNTERS)
    assert stats.restored == 12 and stats.trained_here == 0 and stats.restarts == 0  # this process starts at 0
    stats.samples_seen += 64
    stats.set_redispatched(2)
    assert stats.trained_here == 64 and stats.requests_redispatched == 6
    assert RunStats.resumed(stats.counters()).counters() == stats.counters()


def test_run_stats_from_an_older_or_newer_checkpoint():
    stats = RunStats.resumed({"samples_seen": 5, "a_key_from_elsewhere": 9})  # missing keys start at 0
    assert stats.counters() == {**dict.fromkeys(COUNTER_KEYS, 0), "samples_seen": 5}
    assert RunStats.resumed(None).counters() == dict.fromkeys(COUNTER_KEYS, 0)


def test_run_stats_replies_restarts_and_publishes():
    stats = RunStats()
    stats.add_reply(8, _stats(gen=2.0, tokens=30, reward_errors=1), weight_load_s=0.25, accepted=True)
    stats.add_reply(4, _stats(gen=9.0), weight_load_s=9.0, accepted=False)  # late: dropped, times not counted
    assert (stats.generated, stats.discarded, stats.dropped, stats.reward_errors) == (12, 4, 4, 1)
    assert (stats.gen_time_s, stats.score_time_s, stats.gen_tokens, stats.weight_load_s) == (2.0, 0.5, 30, 0.25)
    stats.add_restart()
    stats.add_publish(100)
    stats.add_publish(40)
    assert (stats.generator_restarts, stats.restarts, stats.last_sync_bytes, stats.sync_bytes) == (1, 1, 40, 140)
    assert list(stats.timing()) == list(TIMING_KEYS) and stats.timing()["sync_bytes"] == 140


# --- WorkerPool ---------------------------------------------------------------------------------------

class FakeWorker:
    def __init__(self, wid, version):
        self.wid, self.version = wid, version
        self.sent, self.killed = [], False

    def send(self, msg):
        self.sent.append(msg)

    def kill(self):
        self.killed = True


class FakePublisher:
    def __init__(self):
        self.removed, self.closed = [], 0

    def publish(self, state, version):
        return WeightsUpdate(version, f"weights of version {version}")

    def remove_worker(self, wid):
        self.removed.append(wid)

    def close(self):
        self.closed += 1


class FakeHost:
    depth = 2

    def __init__(self):
        self.publisher = FakePublisher()
        self.started: list[FakeWorker] = []
        self.slots: list[int] = []
        self.closed = 0

    def start(self, wid, version, slot=0):
        self.started.append(FakeWorker(wid, version))
        self.slots.append(slot)  # the generator slot each start was for (prompt shards follow it)
        return self.started[-1]

    def close(self):
        self.closed += 1


def _pool(n=2, max_restarts=1, resumed=None, version=0):
    host, notes = FakeHost(), []
    pool = WorkerPool(host, Scheduler(1, 4, host.depth), RunStats(), num_generators=n, max_restarts=max_restarts,
                      version=lambda: version, note=notes.append, resumed_states=resumed)
    return pool, host, notes


def _start(pool):
    pool.start()
    for wid in list(pool.workers):
        pool.handle(WorkerReady(wid))
    pool.started = True


def test_pool_starts_one_worker_per_slot_and_sends_the_latest_weights_to_late_ones():
    pool, host, _ = _pool(n=2, version=3)
    pool.start()
    assert [(w.wid, w.version) for w in host.started] == [(0, 3), (1, 3)] and pool.slot_of == {0: 0, 1: 1}
    pool.handle(WorkerReady(0))
    assert not pool.all_ready() and pool.ready == {0}
    w = torch.zeros(2)
    pool.publish({"w": w, "tied": w}, 3)  # only the ready worker gets it now ...
    update = WeightsUpdate(3, "weights of version 3")
    assert host.started[0].sent == [update] and host.started[1].sent == []
    pool.handle(WorkerReady(1))  # ... the other when it is ready
    assert pool.all_ready() and host.started[1].sent == [update]
    assert pool.stats.last_sync_bytes == 8  # a tied tensor travels once
    pool.dispatch(step=3, published=3)
    assert all(isinstance(w.sent[-1], GenerateRequest) for w in host.started)


def test_pool_restores_a_resumed_runs_first_workers_only():
    states = [GeneratorState(7, 40), None]
    pool, host, _ = _pool(n=2, resumed=states)
    pool.start()
    pool.handle(WorkerReady(0))
    pool.handle(WorkerReady(1))
    assert host.started[0].sent == [RestoreGenerator(states[0])] and host.started[1].sent == []
    pool.started = True
    pool.handle(WorkerLost(0, "killed"))
    pool.handle(WorkerReady(2))  # the replacement in slot 0 starts fresh from its slot's last trained state
    assert pool.slot_of[2] == 0 and host.started[2].sent == []


def test_pool_replaces_a_lost_worker_in_its_slot_and_redispatches_its_requests():
    pool, host, notes = _pool(n=2, max_restarts=1)
    _start(pool)
    pool.publish({}, 0)
    pool.dispatch(0, 0)
    held = pool.scheduler.held_by(1)
    assert held
    pool.handle(WorkerError(1, "Traceback ...\nRuntimeError: boom"))
    assert host.started[1].killed and 1 not in pool.workers and 1 not in pool.ready
    assert host.publisher.removed == [1]
    assert pool.slot_of[2] == 1 and host.started[2].wid == 2
    assert host.slots == [0, 1, 1]  # the replacement started in the lost worker's slot
    assert pool.stats.generator_restarts == 1 and pool.failure is None
    assert notes == [f"generator 1 lost (RuntimeError: boom); {len(held)} request(s) to re-dispatch, "
                     f"starting a replacement"]
    pool.handle(WorkerLost(1, "exited"))  # the same loss reported twice: nothing more
    assert pool.stats.generator_restarts == 1 and len(host.started) == 3
    pool.handle(WorkerReady(2))
    assert host.started[2].sent == [WeightsUpdate(0, "weights of version 0")]  # the latest weights before any request
    pool.dispatch(0, 0)  # the lost requests go out again
    assert any(isinstance(m, GenerateRequest) and m.attempt == 1 for m in host.started[2].sent)


def test_pool_gives_up_after_max_restarts():
    pool, host, _ = _pool(n=1, max_restarts=1)
    _start(pool)
    pool.handle(WorkerLost(0, "out of memory"))
    pool.handle(WorkerLost(1, "out of memory again"))
    assert pool.failure == ("generator workers failed 2 times, more than max_generator_restarts=1; "
                            "last: out of memory again")
    assert len(host.started) == 2  # no third worker


def test_pool_failures_before_start_and_user_errors_stop_the_run():
    pool, _, _ = _pool(n=1)
    pool.start()
    with pytest.raises(RunFailed, match="generator 0 failed to start:\nno such model"):
        pool.handle(WorkerError(0, "no such model"))
    pool, _, _ = _pool(n=1)
    _start(pool)
    with pytest.raises(RunFailed, match="^reward failed$"):
        pool.handle(WorkerError(0, "reward failed", user_error=True))


def test_pool_counts_replies_and_keeps_the_slots_generator_state():
    pool, _, _ = _pool(n=1)
    _start(pool)
    pool.publish({}, 0)
    (wid, req), = [(w, r) for w, r in pool.scheduler.dispatch(0, 0)][:1]
    state = GeneratorState(3, 8)
    done = RequestDone(wid, req.request_id, [_group([1.0, 0.0])], _stats(), 0.1, state)
    pool.handle(done)
    pool.handle(RequestDone(wid, req.request_id, [_group([1.0])], _stats(), 0.0))  # a second reply
    assert (pool.stats.generated, pool.stats.discarded, pool.stats.dropped) == (3, 1, 1)
    assert pool.take_pending() == [done.stats] and pool.take_pending() == []
    assert pool.generator_states() == [None]
    pool.record(done)
    assert pool.generator_states() == [state.to_dict()]


def test_pool_close_closes_the_host_once_and_leaves_its_publisher_to_it():
    pool, host, _ = _pool()
    pool.close()
    # the host owns its publisher and closes it in host.close() (hosts.py); the pool must not close it twice
    assert host.closed == 1 and host.publisher.closed == 0


# --- the training clock and the evaluator -----------------------------------------------------------------

def test_train_clock_continues_a_resume_pauses_for_evaluation_and_stops():
    now = FakeClock(10.0)
    clock = TrainClock(start_s=50.0, now=now)
    now.t = 30.0
    clock.restart()  # set-up (20 s) is not training
    now.t = 40.0
    assert clock.wall() == 60.0
    clock.pause(4.0)
    assert clock.wall() == 56.0
    clock.stop()
    now.t = 1000.0
    clock.pause(100.0)
    assert clock.wall() == 56.0 and clock.paused_s == 104.0


class FakeLearner:
    def __init__(self):
        self.version, self.model, self.ref_model = 0, object(), None

    def weights(self):
        return {"v": self.version}


class FakeLogger:
    def __init__(self):
        self.evals = []

    def log_eval(self, row, generations):
        self.evals.append((row, generations))


def _evaluator(monkeypatch, now, **cfg):
    cfg = Config(**{"steps": 10, "eval_every": 4, "eval_log_generations": 1, **cfg})

    def fake_evaluate(model, tokenizer, task, engine=None, **kw):
        now.t += 3.0  # the evaluation takes 3 s of wall time
        return {"accuracy": 0.5, "mean_length": float("nan")}, [{"i": 0}, {"i": 1}]

    monkeypatch.setattr(evaluator_mod, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluator_mod.time, "perf_counter", now)
    clock = TrainClock(now=now)
    learner, logger = FakeLearner(), FakeLogger()
    ev = Evaluator(cfg, SimpleNamespace(), learner, None, torch.device("cpu"), policy_path="p", base_path="b",
                   logger=logger, clock=clock)
    return ev, learner, logger, clock


def test_evaluator_logs_pauses_the_clock_and_keeps_history(monkeypatch):
    now = FakeClock(0.0)
    ev, learner, logger, clock = _evaluator(monkeypatch, now)
    now.t = 5.0
    assert ev.run(0) == 0.5
    assert logger.evals[0][0] == {"step": 0, "wall_time_s": 5.0, "accuracy": 0.5, "mean_length": ev.history[0][
        "mean_length"], "n": 2, "eval_time_s": 3.0}
    assert logger.evals[0][1] == [{"i": 0}]  # eval_log_generations
    assert clock.wall() == 5.0 and clock.paused_s == 3.0  # 8 s passed, 3 of them evaluating
    assert [e["step"] for e in ev.history] == [0]
    assert [s for s in range(1, 11) if ev.due(s)] == [4, 8]  # not at the end: the final evaluation is its own


def test_evaluator_builds_its_engine_once_and_loads_new_weights(monkeypatch):
    now = FakeClock(0.0)
    built = []

    class FakeEngine:
        def __init__(self, version):
            self.version, self.loads, self.closed = version, [], False

        def load_weights(self, state, version):
            self.loads.append(version)
            self.version = version

        def close(self):
            self.closed = True

    def make_engine(cfg, path, tokenizer, name, temperature, seed, version):
        built.append((path, name, version))
        return FakeEngine(version)

    monkeypatch.setattr(evaluator_mod, "make_engine", make_engine)
    ev, learner, _, _ = _evaluator(monkeypatch, now, eval_engine="vllm")
    ev.run(0)
    learner.version = 4
    ev.run(4)
    ev.run(4)
    engine = ev.engine
    assert built == [("p", "vllm", 0)] and engine.loads == [4]
    ev.close()
    assert engine.closed and ev.engine is None


# --- checkpoint cadence --------------------------------------------------------------------------------

def test_cadence_by_steps_and_by_minutes():
    now = FakeClock(0.0)
    by_steps = CheckpointCadence(save_every=5, save_every_minutes=None, steps=20, now=now)
    assert [s for s in range(1, 21) if by_steps.due(s)] == [5, 10, 15]  # never the last step
    assert not by_steps.due(5, failed=True)
    by_time = CheckpointCadence(save_every=0, save_every_minutes=2, steps=20, now=now)
    now.t = 119.0
    assert not by_time.due(1)
    now.t = 120.0
    assert by_time.due(2)
    by_time.saved()
    now.t = 200.0
    assert not by_time.due(3)
    assert not CheckpointCadence(0, None, 20, now=now).due(10)


# --- the metrics row --------------------------------------------------------------------------------------

# A default job's row as main 1948c35 wrote it (metrics.jsonl keys, in order), then the keys added since.
ROW_KEYS = ["step", "wall_time_s", "samples_seen", "reward_mean", "fresh_reward_mean", "loss", "kl", "staleness_mean",
            "staleness_max", "dropped_total", "reward_errors_total", "generator_restarts_total",
            "requests_redispatched_total", "skipped_update", "skipped_updates_total", "gen_tokens_per_s",
            "learner_tokens_per_s", "sync_time_s", "sync_bytes", "wait_time_s", "grad_norm", "lr", "train_time_s",
            "learner_tokens", "loss/logZ_mean", "buffer/size", "buffer/dropped",
            # added since: how much the generators produced and how busy they were
            "samples_produced", "generator_busy_share"]


def test_metrics_row_keys_order_and_values():
    stats = RunStats(samples_seen=8, dropped=1, reward_errors=2, generator_restarts=3, requests_redispatched=4,
                     skipped_updates=5)
    batch = SimpleNamespace(groups=[_group([1.0, 0.0]), _group([1.0, 1.0])], staleness_mean=0.5, staleness_max=1)
    m = {"loss": 0.25, "kl": 0.01, "learner_tokens_per_s": 7.0, "grad_norm": 1.0, "lr": 1e-6, "train_time_s": 0.2,
         "learner_tokens": 40, "loss/logZ_mean": 0.3}
    row = step_row(step=3, wall_s=9.5, stats=stats, batch=batch, fresh=[_group([0.0, 0.0])],
                   replies=[_stats(gen=2.0, tokens=10), _stats(gen=3.0, tokens=15)], learner_metrics=m, skipped=False,
                   sync_s=0.1, sync_bytes=64, wait_s=0.4, buffer_stats={"size": 2.0, "dropped": 0.0}, produced=16,
                   generator_busy_share=0.25)
    assert list(row) == ROW_KEYS
    assert (row["samples_produced"], row["generator_busy_share"]) == (16, 0.25)
    assert row["reward_mean"] == 0.75 and row["fresh_reward_mean"] == 0.0 and row["gen_tokens_per_s"] == 5.0
    assert (row["dropped_total"], row["skipped_updates_total"], row["skipped_update"]) == (1, 5, 0)
    assert "loss" in m  # the learner's dict is left as it was
    clock = [k for k in row if measures_the_clock(k)]
    assert clock == ["wall_time_s", "gen_tokens_per_s", "learner_tokens_per_s", "sync_time_s", "wait_time_s",
                     "train_time_s", "generator_busy_share"]


def test_metrics_row_reward_parts_and_an_empty_request():
    replies = [_stats(reward_components={"fmt": (1.0, 2), "acc": (0.0, 0)}),
               _stats(reward_components={"fmt": (2.0, 2)})]
    assert list(reward_parts(replies)) == ["rewards/fmt/mean", "rewards/acc/mean"]
    parts = reward_parts(replies)
    assert parts["rewards/fmt/mean"] == 0.75 and parts["rewards/acc/mean"] != parts["rewards/acc/mean"]  # NaN
    batch = SimpleNamespace(groups=[_group([1.0])], staleness_mean=0.0, staleness_max=0)
    row = step_row(step=1, wall_s=0.0, stats=RunStats(), batch=batch, fresh=[], replies=replies,
                   learner_metrics={"loss": 0.0, "kl": 0.0, "learner_tokens_per_s": 0.0}, skipped=True, sync_s=0.0,
                   sync_bytes=0, wait_s=0.0, buffer_stats={})
    assert row["fresh_reward_mean"] != row["fresh_reward_mean"]  # NaN: reward_errors=skip dropped every group
    assert list(row)[5:7] == ["rewards/fmt/mean", "rewards/acc/mean"] and row["skipped_update"] == 1


# --- the summary ------------------------------------------------------------------------------------------

# summary.json's keys as main 1948c35 wrote them.
SUMMARY_KEYS = ["steps", "interrupted", "signal", "failed", "final_accuracy", "wall_time_s", "setup_time_s",
                "samples_seen", "dropped", "reward_errors", "generator_restarts", "requests_redispatched",
                "skipped_updates", "filtered", "accounting", "checkpoint", "run_dir", "eval_history", "gen_time_s",
                "score_time_s", "gen_tokens", "train_time_s", "wait_time_s", "sync_time_s", "eval_time_s",
                "weight_load_s", "sync_bytes"]
ACCOUNTING_KEYS = ["samples_generated", "samples_restored", "samples_trained", "samples_in_buffer",
                   "samples_dropped", "samples_evicted", "samples_filtered", "requests"]


def test_summary_keys_and_accounting():
    sched = Scheduler(1, 4, 2)
    sched.add_worker(0)
    (wid, req), *_ = sched.dispatch(0, 0)
    sched.complete(wid, req.request_id, SimpleNamespace(samples=6))  # completed, never trained: unconsumed
    stats = RunStats.resumed({"samples_seen": 10}, restored=4)
    stats.samples_seen += 8
    stats.generated, stats.discarded = 20, 2
    s = build_summary(steps=3, interrupted=True, signal="SIGTERM", failed=None, final_accuracy=None, wall_time_s=1.0,
                      setup_time_s=2.0, stats=stats, scheduler=sched, buffer_len=5,
                      buffer_stats={"dropped": 1, "evicted": 2, "duplicates": 1}, checkpoint="c", run_dir="r",
                      eval_history=[{"step": 0, "accuracy": float("nan")}])
    assert list(s) == SUMMARY_KEYS and list(s["accounting"]) == ACCOUNTING_KEYS
    acc = s["accounting"]
    assert (acc["samples_generated"], acc["samples_restored"], acc["samples_trained"]) == (24, 4, 8)
    assert (acc["samples_dropped"], acc["samples_evicted"], acc["requests"]["unconsumed"]) == (1 + 2 + 6, 3, 1)
    assert s["eval_history"] == [{"step": 0, "accuracy": None}] and s["samples_seen"] == 18


# --- signals ------------------------------------------------------------------------------------------------

def test_the_first_signal_stops_and_the_second_aborts(caplog):
    asked = []
    handler = SignalStop(asked.append)
    handler(signal.SIGTERM)
    assert asked == ["SIGTERM"] and "SIGTERM: stopping after this step" in caplog.text
    with pytest.raises(RunAborted, match="aborted by a second SIGINT"):
        handler(signal.SIGINT)
    assert asked == ["SIGTERM"] and handler.received == ["SIGTERM", "SIGINT"]


def test_stop_on_signals_handles_real_signals_and_restores_the_old_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    asked = []
    with stop_on_signals(asked.append) as handler:
        assert signal.getsignal(signal.SIGTERM) is handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert asked == ["SIGTERM"]
        with pytest.raises(RunAborted):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before


def test_stop_on_signals_off_the_main_thread_installs_nothing():
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def body():
        with stop_on_signals(print):
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [before]


# --- the run leaves the caller's process as it found it -------------------------------------------------

@pytest.mark.e2e
def test_a_run_restores_the_callers_thread_count_and_random_state(tmp_path):
    """The controller sets the learner's threads and seeds torch for the run; the caller gets its
    own back (the summary is what a run returns, so nothing else of the run is lost)."""
    from asyncrl.runtime.controller import Controller

    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    mine = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    cfg = Config(steps=2, prompts_per_step=2, samples_per_prompt=2, eval_every=0, eval_limit=4, max_new_tokens=4,
                 workers="inline", max_lag=0, save_every=0, save_every_minutes=None, learner_threads=3)
    try:
        summary = Controller(cfg, tmp_path / "run").run()
        assert summary["steps"] == 2
        assert torch.get_num_threads() == mine
        assert torch.equal(torch.rand(3), expected)
    finally:
        torch.set_num_threads(threads)


def test_episode_stats_average_the_replies_and_are_null_without_one():
    import math

    from asyncrl.runtime.metrics_row import episode_stats
    from asyncrl.types import GenStats

    a = GenStats(1.0, 0.1, 10, 0, episodes=8, turns=20, truncated=2)
    b = GenStats(1.0, 0.1, 10, 0, episodes=8, turns=12, truncated=0)
    assert episode_stats([a, b]) == {"episode_turns_mean": 2.0, "episode_truncated_mean": 0.125}
    empty = episode_stats([])
    assert set(empty) == {"episode_turns_mean", "episode_truncated_mean"} and all(math.isnan(v) for v in empty.values())
