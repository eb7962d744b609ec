"""Replay buffers between asynchronous generators and the learner.

Generators push ``Group``s (one prompt, K samples drawn together by one policy version); the
learner pulls ``BufferBatch``es of ``num_groups`` groups, each exactly K samples of one prompt,
because the losses reshape the flattened rows to [B, K] (see ``asyncrl.losses.common``).

Two policies:

* ``FifoBuffer``: each group is used once, oldest first, and groups staler than ``max_lag``
  learner steps are dropped. This is the classic bounded-staleness asynchronous setup.
* ``TbaBuffer``: the per-prompt replay of TBA, Bartoldson et al. 2025, "Trajectory Balance with
  Asynchrony: Decoupling Exploration and Learning for Fast, Scalable LLM Post-Training"
  (arXiv:2503.18929), reference code github.com/bbartoldson/TBA ``src/buffer_utils.py``.
  Data is reused; with probability ``m`` a batch slot favours the most on-policy data.

Staleness of a sample = learner_version - sample.version (learner updates since its weights).
"""

from __future__ import annotations

import math
import random
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from asyncrl.types import Group, Prompt, Sample, prompt_from_state, prompt_state, samples_from_state, samples_state

__all__ = ["BufferBatch", "ReplayBuffer", "FifoBuffer", "TbaBuffer", "make_buffer"]


@dataclass
class BufferBatch:
    """What the learner trains on in one step.

    Rows are the prompt-major flattening of ``groups``: row ``g*K + k`` is
    ``groups[g].samples[k]``, matching the [B*K] -> [B, K] layout the losses expect.
    """

    groups: list[Group]  # [B] groups, each with exactly K samples of one prompt
    staleness: list[int]  # [B*K] learner_version - sample.version, prompt-major
    dropped: int = 0  # samples discarded as too stale since the previous returned batch

    @property
    def staleness_mean(self) -> float:
        return sum(self.staleness) / len(self.staleness) if self.staleness else 0.0

    @property
    def staleness_max(self) -> int:
        return max(self.staleness) if self.staleness else 0

    @property
    def num_samples(self) -> int:
        return len(self.staleness)


@runtime_checkable
class ReplayBuffer(Protocol):
    """Producer/consumer interface; implementations guard state with a ``threading.Lock``."""

    def add(self, groups: list[Group]) -> None: ...

    def sample(self, num_groups: int, learner_version: int) -> BufferBatch | None:
        """A batch of ``num_groups`` groups, or None when there is not enough data yet."""
        ...

    def __len__(self) -> int: ...

    def stats(self) -> dict[str, float]: ...

    def state_dict(self) -> dict:
        """Contents, counters and random state, for an exact resume (tensors + JSON-able values)."""
        ...

    def load_state_dict(self, state: dict) -> None: ...


def split_informative(groups: list[Group]) -> tuple[list[Group], list[Group]]:
    """(groups whose rewards differ, groups whose K rewards all tie): dynamic sampling keeps the
    first, which are the only ones a group baseline gives an advantage to."""
    keep, tied = [], []
    for g in groups:
        rewards = [s.reward for s in g.samples]
        (tied if rewards and max(rewards) == min(rewards) else keep).append(g)
    return keep, tied


def _check_num_groups(num_groups: int) -> None:
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")


class FifoBuffer:
    """Use-once FIFO with bounded staleness.

    At ``sample(num_groups, L)`` every held group with ``L - group.version > max_lag`` is dropped
    (``group.version`` is its oldest sample, so no returned sample can exceed ``max_lag``). Drops
    are permanent because the learner version only grows, so a stale group never becomes usable.
    Drops that happen during a call that returns None are reported in the next returned batch,
    so the sum of ``batch.dropped`` over batches equals ``stats()["dropped"]``.
    """

    def __init__(self, max_lag: int):
        if max_lag < 0:
            raise ValueError(f"max_lag must be >= 0, got {max_lag}")
        self.max_lag = max_lag
        self._lock = threading.Lock()
        self._queue: deque[Group] = deque()
        self._size = 0  # samples held, kept so __len__ is O(1)
        self._dropped = 0
        self._dropped_groups = 0
        self._pending_dropped = 0  # dropped samples not yet reported in a batch

    def add(self, groups: list[Group]) -> None:
        with self._lock:
            for g in groups:
                if not g.samples:  # an empty group has no version and nothing to train on
                    continue
                self._queue.append(g)
                self._size += len(g.samples)

    def sample(self, num_groups: int, learner_version: int) -> BufferBatch | None:
        _check_num_groups(num_groups)
        with self._lock:
            # Scan everything, not just the head: several generators may push out of version order.
            fresh: deque[Group] = deque()
            for g in self._queue:
                if learner_version - g.version > self.max_lag:
                    n = len(g.samples)
                    self._dropped += n
                    self._dropped_groups += 1
                    self._pending_dropped += n
                    self._size -= n
                else:
                    fresh.append(g)
            self._queue = fresh
            if len(self._queue) < num_groups:
                return None
            groups = [self._queue.popleft() for _ in range(num_groups)]  # [B]
            self._size -= sum(len(g.samples) for g in groups)
            staleness = [learner_version - s.version for g in groups for s in g.samples]  # [B*K]
            dropped, self._pending_dropped = self._pending_dropped, 0
            return BufferBatch(groups=groups, staleness=staleness, dropped=dropped)

    def __len__(self) -> int:
        with self._lock:
            return self._size

    def state_dict(self) -> dict:
        with self._lock:
            groups = list(self._queue)
            return {
                "kind": "fifo",
                "prompts": [prompt_state(g.prompt) for g in groups],  # [G]
                "group_sizes": [len(g.samples) for g in groups],  # [G]
                "samples": samples_state([s for g in groups for s in g.samples]),
                "counters": {"dropped": self._dropped, "dropped_groups": self._dropped_groups,
                             "pending_dropped": self._pending_dropped},
            }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "fifo":
            raise ValueError(f"cannot load a {state.get('kind')!r} buffer state into a fifo buffer")
        samples = iter(samples_from_state(state["samples"]))
        with self._lock:
            self._queue = deque(Group(prompt_from_state(p), [next(samples) for _ in range(n)])
                                for p, n in zip(state["prompts"], state["group_sizes"]))
            self._size = sum(len(g.samples) for g in self._queue)
            c = state["counters"]
            self._dropped, self._dropped_groups, self._pending_dropped = (
                c["dropped"], c["dropped_groups"], c["pending_dropped"])

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {
                "size": float(self._size),
                "groups": float(len(self._queue)),
                "prompts": float(len({g.prompt.prompt_id for g in self._queue})),
                "dropped": float(self._dropped),
                "dropped_groups": float(self._dropped_groups),
                # Same keys as TbaBuffer so loggers need not branch on the mode.
                "evicted": 0.0,
                "duplicates": 0.0,
            }


@dataclass
class _Entry:
    seq: int  # global insertion counter: the global capacity evicts the smallest first
    sample: Sample


class TbaBuffer:
    """Per-prompt replay buffer from TBA (Bartoldson et al. 2025, arXiv:2503.18929).

    Storage (as in TBA's ``CommentBuffer``): samples are kept per prompt id; a completion whose
    token ids are already stored for that prompt collapses into one entry holding the newer
    version (and hence its behaviour log-probs, which must match the version for importance
    ratios); each prompt keeps its newest ``per_prompt_capacity`` samples (by version, then
    insertion). Beyond TBA, a global ``capacity`` in samples evicts the oldest insertions so memory
    stays bounded when the prompt set is large; prompts left empty are removed.

    Sampling, per group slot: with probability ``recency_prob`` (TBA's ``m``, ``on_policy_prob``)
    pick uniformly among the prompts refreshed at the latest sync, i.e. those holding a sample of
    the newest version present in the buffer; otherwise pick from all prompts with probability
    ``softmax(inv_temp * mean reward of the prompt's stored samples)``. Then draw K samples of the
    chosen prompt.

    Comparison with the TBA reference code (``src/buffer_utils.py``):

    * Reward prioritisation. TBA picks the *prompt* for a non-recent slot uniformly (cycling
      through seen prompts without replacement) and applies ``softmax(inv_temp * reward)`` to the
      *individual samples* inside that prompt; its GSM8K trainer sets ``inv_temp=0``, i.e.
      uniform. We depart: we prioritise at the prompt level and draw samples inside the prompt
      uniformly. Reason: our losses use group baselines (leave-one-out / group mean) over the K
      samples; weighting samples inside a group by reward fills groups with the best answers, so
      the baseline tracks them and the advantages collapse to ~0 (and become biased). Scoring
      prompts keeps each group an unweighted draw of its prompt's samples while still letting
      ``inv_temp`` steer *which* prompts are replayed. With ``inv_temp=0`` both reduce to uniform.
    * Recent slots. TBA draws K samples only from those added since the last sync (with
      replacement if fewer). We take the newest-version samples first and fill from the next
      newest, so a prompt with few fresh unique completions yields a group of distinct samples
      rather than K copies of one (which would have zero advantage).
    * Exhausted recent pool. Prompts are drawn without replacement within one batch. When every
      refreshed prompt is already in the batch, TBA reuses refreshed prompts; we instead fall back
      to the reward-prioritised pick over unused prompts (counted in ``recency_fallbacks``),
      preferring prompt diversity. Only when every prompt is in the batch do prompts repeat.

    Fresh data (``newest_lag``, set by ``generation: continuous``): ``sample`` returns None while
    the newest stored sample is more than ``newest_lag`` versions behind ``learner_version``, so the
    learner waits for the generators instead of replaying ever older data (TBA's sync barrier holds
    its trainer the same way). Older samples are still replayed: this bounds the freshest data, not
    each draw. None = no such wait (gated generation adds a fresh request every step).

    K samples per group: without replacement when the prompt holds >= K, otherwise all of them plus
    uniform draws with replacement, because the losses reshape rows to [B, K] and need exactly K.
    Deduplication makes this case common for easy prompts (many identical correct answers).
    """

    def __init__(
        self,
        group_size: int,
        recency_prob: float,
        inv_temp: float,
        per_prompt_capacity: int,
        capacity: int,
        seed: int,
        newest_lag: int | None = None,
    ):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if not 0.0 <= recency_prob <= 1.0:
            raise ValueError(f"recency_prob must be in [0, 1], got {recency_prob}")
        if per_prompt_capacity < 1:
            raise ValueError(f"per_prompt_capacity must be >= 1, got {per_prompt_capacity}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not math.isfinite(inv_temp):
            raise ValueError(f"inv_temp must be finite, got {inv_temp}")
        self.group_size = group_size
        self.recency_prob = recency_prob
        self.inv_temp = inv_temp
        self.per_prompt_capacity = per_prompt_capacity
        self.capacity = capacity
        if newest_lag is not None and newest_lag < 0:
            raise ValueError(f"newest_lag must be >= 0, got {newest_lag}")
        self.newest_lag = newest_lag
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._prompts: dict[str, Prompt] = {}
        self._entries: dict[str, dict[tuple[int, ...], _Entry]] = {}  # prompt_id -> completion -> entry
        # Global insertion order over (prompt_id, completion); re-inserted duplicates move to the end.
        self._order: OrderedDict[tuple[str, tuple[int, ...]], None] = OrderedDict()
        self._seq = 0
        self._duplicates = 0
        self._evicted = 0
        self._evicted_prompt_cap = 0
        self._recency_picks = 0
        self._reward_picks = 0
        self._recency_fallbacks = 0

    # ---------------------------------------------------------------- storage

    def add(self, groups: list[Group]) -> None:
        with self._lock:
            for g in groups:
                pid = g.prompt.prompt_id
                for s in g.samples:
                    if s.prompt_id != pid:
                        raise ValueError(f"sample of prompt {s.prompt_id!r} in a group of {pid!r}")
                    self._insert(g.prompt, s)
            while len(self._order) > self.capacity:
                (pid, key), _ = self._order.popitem(last=False)
                self._remove(pid, key, from_order=False)
                self._evicted += 1

    def _insert(self, prompt: Prompt, s: Sample) -> None:
        pid = prompt.prompt_id
        key = tuple(s.completion_ids)
        bucket = self._entries.setdefault(pid, {})
        self._prompts[pid] = prompt
        old = bucket.get(key)
        if old is not None:
            self._duplicates += 1
            # Generators run different versions concurrently, so the "new" copy can be older.
            if s.version < old.sample.version:
                return
            del self._order[(pid, key)]
        bucket[key] = _Entry(self._seq, s)
        self._order[(pid, key)] = None
        self._seq += 1
        if len(bucket) > self.per_prompt_capacity:
            # Oldest by version, not by arrival, so a late-arriving stale sample is the one to go.
            victim = min(bucket, key=lambda k: (bucket[k].sample.version, bucket[k].seq))
            self._remove(pid, victim, from_order=True)
            self._evicted_prompt_cap += 1

    def _remove(self, pid: str, key: tuple[int, ...], *, from_order: bool) -> None:
        bucket = self._entries[pid]
        del bucket[key]
        if from_order:
            del self._order[(pid, key)]
        if not bucket:
            del self._entries[pid]
            del self._prompts[pid]

    # ---------------------------------------------------------------- sampling

    def sample(self, num_groups: int, learner_version: int) -> BufferBatch | None:
        _check_num_groups(num_groups)
        with self._lock:
            if not self._entries:
                return None
            pids = list(self._entries)  # [P] insertion order, so draws are reproducible per seed
            max_version = {p: max(e.sample.version for e in self._entries[p].values()) for p in pids}
            newest = max(max_version.values())
            if self.newest_lag is not None and learner_version - newest > self.newest_lag:
                return None  # wait for fresher data (continuous generation)
            recent = [p for p in pids if max_version[p] == newest]  # [R] refreshed at latest sync
            # Softmax logits, max-shifted so large inv_temp cannot overflow exp.
            logits = [
                self.inv_temp * sum(e.sample.reward for e in self._entries[p].values()) / len(self._entries[p])
                for p in pids
            ]  # [P]

            used: set[str] = set()
            groups: list[Group] = []  # [B]
            staleness: list[int] = []  # [B*K]
            for _ in range(num_groups):
                if len(used) == len(pids):  # batch wider than the buffer: prompts must repeat
                    used.clear()
                pid, from_recent = None, False
                if self._rng.random() < self.recency_prob:
                    pool = [p for p in recent if p not in used]
                    if pool:
                        pid, from_recent = self._rng.choice(pool), True
                        self._recency_picks += 1
                    else:
                        self._recency_fallbacks += 1
                if pid is None:
                    idx = [i for i, p in enumerate(pids) if p not in used]
                    top = max(logits[i] for i in idx)
                    weights = [math.exp(logits[i] - top) for i in idx]
                    pid = pids[self._rng.choices(idx, weights=weights)[0]]
                    self._reward_picks += 1
                used.add(pid)
                samples = self._draw_k(pid, newest_first=from_recent)  # [K]
                groups.append(Group(prompt=self._prompts[pid], samples=samples))
                staleness.extend(learner_version - s.version for s in samples)
            return BufferBatch(groups=groups, staleness=staleness, dropped=0)

    def _draw_k(self, pid: str, *, newest_first: bool) -> list[Sample]:
        pool = [e.sample for e in self._entries[pid].values()]  # [n] stored samples of the prompt
        k = self.group_size
        take = min(k, len(pool))
        if newest_first:
            # Shuffle then stable sort: random within a version, newest versions first.
            pool = pool[:]
            self._rng.shuffle(pool)
            pool.sort(key=lambda s: -s.version)
            chosen = pool[:take]
        else:
            chosen = self._rng.sample(pool, take)
        if take < k:
            chosen += self._rng.choices(pool, k=k - take)
        return chosen  # [K]

    # ---------------------------------------------------------------- introspection

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)

    _COUNTERS = ("_seq", "_duplicates", "_evicted", "_evicted_prompt_cap", "_recency_picks", "_reward_picks",
                 "_recency_fallbacks")

    def state_dict(self) -> dict:
        """Every stored sample with its insertion number, in the exact dict orders sampling
        iterates (prompts, then each prompt's entries), the global eviction order, the counters and
        the random state: a loaded buffer draws the same batches as the saved one would have."""
        with self._lock:
            pids = list(self._entries)  # [P]
            index = {}  # (pid, completion) -> position in the flat entry list
            samples, seqs, bucket_sizes = [], [], []
            for pid in pids:
                bucket = self._entries[pid]
                bucket_sizes.append(len(bucket))
                for key, e in bucket.items():
                    index[(pid, key)] = len(samples)
                    samples.append(e.sample)
                    seqs.append(e.seq)
            version, internal, gauss = self._rng.getstate()
            return {
                "kind": "tba",
                "prompts": [prompt_state(self._prompts[p]) for p in pids],  # [P]
                "bucket_sizes": bucket_sizes,  # [P]
                "samples": samples_state(samples),  # [S], prompt-major
                "seq": torch.tensor(seqs, dtype=torch.int64),  # [S]
                "order": torch.tensor([index[k] for k in self._order], dtype=torch.int64),  # [S]
                "counters": {k: getattr(self, k) for k in self._COUNTERS},
                "rng": [version, list(internal), gauss],
            }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "tba":
            raise ValueError(f"cannot load a {state.get('kind')!r} buffer state into a tba buffer")
        samples = samples_from_state(state["samples"])
        seqs = state["seq"].tolist()
        with self._lock:
            self._prompts, self._entries, keys = {}, {}, []
            i = 0
            for p, n in zip(state["prompts"], state["bucket_sizes"]):
                prompt = prompt_from_state(p)
                self._prompts[prompt.prompt_id] = prompt
                bucket = self._entries[prompt.prompt_id] = {}
                for _ in range(n):
                    key = tuple(samples[i].completion_ids)
                    bucket[key] = _Entry(seqs[i], samples[i])
                    keys.append((prompt.prompt_id, key))
                    i += 1
            self._order = OrderedDict((keys[j], None) for j in state["order"].tolist())
            for k, v in state["counters"].items():
                setattr(self, k, v)
            version, internal, gauss = state["rng"]
            self._rng.setstate((version, tuple(internal), gauss))

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {
                "size": float(len(self._order)),
                "prompts": float(len(self._entries)),
                "dropped": 0.0,  # TBA replays stale data by design; staleness is reported per batch
                "evicted": float(self._evicted),
                "evicted_prompt_cap": float(self._evicted_prompt_cap),
                "duplicates": float(self._duplicates),
                "recency_picks": float(self._recency_picks),
                "reward_picks": float(self._reward_picks),
                "recency_fallbacks": float(self._recency_fallbacks),
            }


def make_buffer(
    mode: str,
    *,
    max_lag: int,
    group_size: int,
    seed: int,
    recency_prob: float | None = None,
    inv_temp: float | None = None,
    per_prompt_capacity: int | None = None,
    capacity: int | None = None,
    newest_lag: int | None = None,
) -> ReplayBuffer:
    """Build the buffer named by ``mode`` ("fifo" or "tba"); the last five are tba's settings (the
    fields of config.TbaBuffer and ``TbaBuffer.newest_lag``), ignored by fifo, whose ``max_lag``
    already bounds every sample it hands out."""
    if mode == "fifo":
        return FifoBuffer(max_lag=max_lag)
    if mode == "tba":
        return TbaBuffer(
            group_size=group_size,
            recency_prob=recency_prob,
            inv_temp=inv_temp,
            per_prompt_capacity=per_prompt_capacity,
            capacity=capacity,
            seed=seed,
            newest_lag=newest_lag,
        )
    raise ValueError(f"unknown buffer mode {mode!r}; expected one of 'fifo', 'tba'")
