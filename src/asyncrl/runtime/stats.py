"""``RunStats``: every count and time total a training run keeps, in one place.

Three kinds, kept apart by name:

- run totals, carried over by a resume and saved in the checkpoint's ``"counters"`` dict
  (:data:`COUNTER_KEYS`; the keys are those of every earlier checkpoint, so old runs resume);
- this process's part (a resumed run counts from the resume): replies generated and discarded,
  generator restarts (``max_generator_restarts`` is per process), the totals at the resume;
- time and throughput totals of this process, written into ``summary.json`` (:data:`TIMING_KEYS`).

Plain bookkeeping: no model, no I/O. The controller, the worker pool and the metrics row read and
add to one instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asyncrl.types import GenStats

# The checkpoint's "counters" dict, in this order (checkpoint.py stores it as given).
COUNTER_KEYS = ("samples_seen", "dropped", "reward_errors", "generator_restarts", "requests_redispatched",
                "skipped_updates", "filtered")
# summary.json's time and throughput totals, in this order.
TIMING_KEYS = ("gen_time_s", "score_time_s", "gen_tokens", "train_time_s", "wait_time_s", "sync_time_s",
               "eval_time_s", "weight_load_s", "sync_bytes")


@dataclass
class RunStats:
    # --- run totals (resume carries them over; checkpoint "counters") ---
    samples_seen: int = 0  # samples trained on (tba: draws)
    dropped: int = 0  # too stale, late or duplicate replies
    reward_errors: int = 0
    generator_restarts: int = 0
    requests_redispatched: int = 0
    skipped_updates: int = 0  # non-finite loss or gradient norm
    filtered: int = 0  # samples held back by dynamic sampling (their group's rewards all tied)
    # --- this process's part ---
    generated: int = 0  # samples in replies received
    discarded: int = 0  # samples in late or second replies (never trained)
    restarts: int = 0  # generator restarts of this process (the limit is per process)
    restored: int = 0  # samples in the buffer restored from the checkpoint
    seen_at_start: int = 0  # samples_seen when this process started
    redispatched_at_start: int = 0  # requests_redispatched when this process started
    filtered_at_start: int = 0  # filtered when this process started
    # The restored buffer's loss counters (dropped, evicted, ...) when this process started.
    buffer_at_start: dict = field(default_factory=dict)
    last_sync_bytes: int = 0  # bytes the latest publish moved
    # --- time and throughput totals of this process (summary.json) ---
    gen_time_s: float = 0.0
    score_time_s: float = 0.0
    gen_tokens: int = 0
    train_time_s: float = 0.0
    wait_time_s: float = 0.0
    sync_time_s: float = 0.0
    eval_time_s: float = 0.0
    weight_load_s: float = 0.0
    sync_bytes: int = 0  # all publishes

    @classmethod
    def resumed(cls, counters: dict | None = None, restored: int = 0) -> RunStats:
        """Stats of a process starting from a checkpoint's ``counters`` (None or {}: a fresh run),
        with ``restored`` samples in its restored buffer. Keys a checkpoint lacks start at 0;
        keys this version does not know are ignored."""
        known = {k: counters[k] for k in COUNTER_KEYS if k in (counters or {})}
        stats = cls(**known, restored=restored)
        stats.seen_at_start = stats.samples_seen
        stats.filtered_at_start = stats.filtered
        stats.redispatched_at_start = stats.requests_redispatched
        return stats

    def counters(self) -> dict:
        """The checkpoint's ``"counters"`` dict (the run totals)."""
        return {k: getattr(self, k) for k in COUNTER_KEYS}

    def timing(self) -> dict:
        """summary.json's time and throughput totals."""
        return {k: getattr(self, k) for k in TIMING_KEYS}

    def add_reply(self, samples: int, stats: GenStats, weight_load_s: float, accepted: bool) -> None:
        """A reply of ``samples`` samples; not ``accepted`` = late or a second reply to its
        request, never trained on (counted as dropped, its times are not counted)."""
        self.generated += samples
        if not accepted:
            self.discarded += samples
            self.dropped += samples
            return
        self.gen_time_s += stats.gen_time_s
        self.score_time_s += stats.score_time_s
        self.gen_tokens += stats.tokens
        self.weight_load_s += weight_load_s
        self.reward_errors += stats.reward_errors

    def add_restart(self) -> None:
        self.generator_restarts += 1
        self.restarts += 1

    def add_publish(self, nbytes: int) -> None:
        self.last_sync_bytes = nbytes
        self.sync_bytes += nbytes

    def set_redispatched(self, this_process: int) -> None:
        """The scheduler's re-dispatch count of this process, added to the resumed total."""
        self.requests_redispatched = self.redispatched_at_start + this_process

    def unconsumed_here(self, buffer_dropped: int) -> int:
        """Samples this process generated (or restored) that the learner has not consumed yet:
        not trained on (tba: each draw consumes one), dropped or filtered. ``buffer_dropped``: the
        samples the buffer dropped as stale in this process, reported in a batch or not yet. fifo:
        what the buffer holds."""
        return (self.generated + self.restored - self.trained_here - self.discarded - buffer_dropped
                - (self.filtered - self.filtered_at_start))

    @property
    def trained_here(self) -> int:
        """Samples trained on by this process."""
        return self.samples_seen - self.seen_at_start
