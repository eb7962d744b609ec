"""``summary.json``: what a run reports when it ends (a pure function of its end state)."""

from __future__ import annotations

from asyncrl.runtime.scheduler import Scheduler
from asyncrl.runtime.stats import RunStats


def _null_nan(v):
    return None if isinstance(v, float) and v != v else v


def build_summary(*, steps: int, interrupted: bool, signal: str | None, failed: str | None,
                  final_accuracy: float | None, wall_time_s: float, setup_time_s: float, stats: RunStats,
                  scheduler: Scheduler, buffer_len: int, buffer_stats: dict, checkpoint: str, run_dir: str,
                  eval_history: list[dict]) -> dict:
    """The summary of a run that trained up to learner step ``steps``. ``failed``: why it stopped
    early (None: it did not); ``signal``: the signal that stopped it; ``buffer_len`` /
    ``buffer_stats``: the replay buffer at the end; ``eval_history``: this process's evaluations."""
    sched = scheduler.stats
    unconsumed = scheduler.unconsumed()
    return {
        "steps": steps,
        "interrupted": interrupted,
        "signal": signal,
        "failed": failed,
        "final_accuracy": final_accuracy,
        "wall_time_s": wall_time_s,
        "setup_time_s": setup_time_s,
        **stats.counters(),
        # This process's samples (a resumed run counts from the resume, and its buffer's
        # restored samples as generated). fifo: generated = trained + in_buffer + dropped. tba
        # replays, so there generated = in_buffer + evicted + dropped, and trained counts
        # draws. dropped = too stale + late/duplicate replies + replies the run ended before
        # training on.
        "accounting": {
            "samples_generated": stats.generated + stats.restored,
            "samples_restored": stats.restored,
            "samples_trained": stats.trained_here,
            "samples_in_buffer": buffer_len,
            # The buffer's counters come back with its state on resume: this process's part only.
            "samples_dropped": int(buffer_stats.get("dropped", 0) - stats.buffer_at_start.get("dropped", 0))
            + stats.discarded + sum(r.samples for r in unconsumed),
            "samples_evicted": int(sum(buffer_stats.get(k, 0) - stats.buffer_at_start.get(k, 0)
                                       for k in ("evicted", "evicted_prompt_cap", "duplicates"))),
            # Dynamic sampling: held back because their group's rewards all tied (never trained).
            "samples_filtered": stats.filtered - stats.filtered_at_start,
            "requests": {"dispatched": sched.dispatched, "completed": sched.completed, "taken": sched.taken,
                         "discarded": sched.discarded, "taken_out_of_order": sched.taken_out_of_order,
                         "unconsumed": len(unconsumed)},
        },
        "checkpoint": checkpoint,
        "run_dir": run_dir,
        # every evaluation this process ran (step 0 / the resume step, each eval_every, the end)
        "eval_history": [{k: _null_nan(v) for k, v in e.items()} for e in eval_history],
        **stats.timing(),
    }
