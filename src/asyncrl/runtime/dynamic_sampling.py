"""Dynamic sampling (DAPO; ``--dynamic-sampling``): train only on prompt groups with an advantage.

A group whose K rewards all tie gives every sample the same group baseline, so grpo/rloo get no
gradient from it and it only dilutes the batch. Such groups are held back instead of entering the
buffer and counted as *filtered*. A learner step short of ``prompts_per_step`` groups then waits
for more generation (the controller dispatches again, through the scheduler's usual lag gate),
up to ``dynamic_sampling_attempts`` extra requests; after that it trains on what the buffer has,
topped up to ``prompts_per_step`` with the latest held-back groups, so a run whose rewards all
tie still makes progress (and says so: ``dynamic_sampling/topped_up``).

Accounting: a held-back group's samples are ``filtered`` until a top-up puts them in the buffer
(then they are trained, or dropped as stale, like any other); summary.json's identity is
generated = trained + in buffer + dropped + evicted + filtered.
"""

from __future__ import annotations

from collections import deque

from asyncrl.buffer import BufferBatch, ReplayBuffer, split_informative
from asyncrl.types import Group


class DynamicSampler:
    def __init__(self, prompts_per_step: int, attempts: int, mini_batches: int = 1):
        self.prompts_per_step = prompts_per_step
        self.attempts = attempts
        self.mini_batches = mini_batches  # a batch must split into them: partial batches are multiples
        self.held: deque[Group] = deque(maxlen=prompts_per_step)  # the latest tied groups, for a top-up
        self.filtered_here = 0  # samples filtered by this process (and not topped up)
        self.filtered_groups_here = 0
        self.waited = 0  # extra requests the current step has waited for
        self._row: dict[str, float] = {}
        self._step_seen = self._step_filtered = 0  # samples admitted / held back since the last batch

    def admit(self, groups: list[Group]) -> list[Group]:
        """The groups of a completed request that go into the buffer; ties are held back and counted."""
        keep, tied = split_informative(groups)
        self._step_seen += sum(len(g.samples) for g in groups)
        self._step_filtered += sum(len(g.samples) for g in tied)
        for g in tied:
            self.held.append(g)  # the oldest held group leaves the reserve: filtered for good
            self.filtered_here += len(g.samples)
            self.filtered_groups_here += 1
        return keep

    def batch(self, buffer: ReplayBuffer, learner_version: int) -> BufferBatch | None:
        """A full batch when the buffer has one; else None (wait for another request) until the
        attempts are spent, then what there is, topped up with held-back groups."""
        batch = buffer.sample(self.prompts_per_step, learner_version=learner_version)
        if batch is None and self.waited < self.attempts:
            self.waited += 1
            return None
        topped = 0
        if batch is None:
            short = self.prompts_per_step - int(buffer.stats().get("groups", 0))  # what the buffer lacks
            while self.held and topped < short:
                g = self.held.pop()  # newest first
                self.filtered_here -= len(g.samples)
                self.filtered_groups_here -= 1
                buffer.add([g])
                topped += 1
            for n in range(self.prompts_per_step, 0, -self.mini_batches):
                batch = buffer.sample(n, learner_version=learner_version)
                if batch is not None:
                    break
        if batch is None:  # nothing at all to train on yet (nothing generated survived): keep waiting
            return None
        self._row = {"dynamic_sampling/extra_requests": self.waited, "dynamic_sampling/topped_up": topped,
                     "dynamic_sampling/groups": len(batch.groups),
                     "dynamic_sampling/filtered_fraction": self._step_filtered / max(1, self._step_seen)}
        self.waited = 0
        self._step_seen = self._step_filtered = 0
        return batch

    def row(self, filtered_total: int) -> dict[str, float]:
        """This step's metrics row entries."""
        return {**self._row, "filtered_total": filtered_total}
