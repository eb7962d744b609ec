"""``CheckpointCadence``: when the training loop writes a periodic checkpoint.

Every ``save_every`` learner steps and/or every ``save_every_minutes`` minutes since the last
checkpoint (0 / None: off), never at the last step (the final checkpoint follows it anyway) and
never once the run has failed (its final checkpoint comes next). A final checkpoint, written on
every way out of the loop, resets the time cadence like any other (:meth:`saved`).
"""

from __future__ import annotations

import time
from typing import Callable


class CheckpointCadence:
    def __init__(self, save_every: int, save_every_minutes: float | None, steps: int,
                 now: Callable[[], float] = time.perf_counter):
        self.save_every = save_every
        self.save_every_minutes = save_every_minutes
        self.steps = steps
        self._now = now
        self.last_save_t = now()  # the time cadence counts from set-up, then from each checkpoint

    def due(self, step: int, failed: bool = False) -> bool:
        """A periodic checkpoint after learner step ``step``."""
        due = (self.save_every and step % self.save_every == 0) or (
            self.save_every_minutes and self._now() - self.last_save_t >= 60 * self.save_every_minutes)
        return bool(due) and step < self.steps and not failed

    def saved(self) -> None:
        """A checkpoint was just written."""
        self.last_save_t = self._now()
