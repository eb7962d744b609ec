"""Property-based tests (hypothesis) for the replay buffers in ``asyncrl.buffer``.

``tests/test_buffer.py`` pins concrete scenarios; this file checks invariants over random runs of
an asynchronous setup. Generators push requests of groups, K samples of one prompt each, from
weights some learner versions old (mostly fresh, sometimes far behind: versions arrive out of
order and some are past ``max_lag``). Some groups are empty (every reward failed), some mix
versions (a weight sync landed mid-group), and completions come from a tiny alphabet so
duplicates are common. Between requests the learner calls ``sample(num_groups, learner_version)``
and steps its version, monotonically, after each batch (sometimes also between calls).

Every sample carries a unique id in ``Sample.text`` (which the buffers never read), so handing a
sample out twice, or handing out one that is no longer stored, can be seen.

Runs are deterministic (``derandomize=True``, no example database) and sized to a few seconds.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncrl.buffer import BufferBatch, FifoBuffer, TbaBuffer
from asyncrl.types import Group, Prompt, Sample

FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

PROMPT_IDS = [f"p{i}" for i in range(5)]
MAX_K = 4

_uids = itertools.count()


def mk_sample(pid: str, version: int, comp: list[int], reward: float = 0.0) -> Sample:
    return Sample(
        prompt_id=pid,
        prompt_ids=[7, 8],  # [P]
        completion_ids=list(comp),  # [C]
        behaviour_logprobs=[-0.5] * len(comp),  # [C]
        reward=reward,
        version=version,
        finished=True,
        text=f"uid{next(_uids)}",  # identity of this sample object; the buffers never read it
    )


def uid(s: Sample) -> str:
    return s.text


def one_group(s: Sample) -> Group:
    return Group(Prompt(s.prompt_id, f"q {s.prompt_id}"), [s])


def chunks(items: list, cuts: list[int]) -> list[list]:
    """``items`` split at the positions in ``cuts``: the ``add`` calls of one test."""
    bounds = sorted({0, len(items), *(c for c in cuts if 0 < c < len(items))})
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def batch_key(b: BufferBatch | None):
    """Everything observable about a batch, by sample identity."""
    if b is None:
        return None
    return [(g.prompt.prompt_id, [uid(s) for s in g.samples]) for g in b.groups], b.staleness, b.dropped


def tba_contents(buf: TbaBuffer) -> dict[str, dict[tuple[int, ...], Sample]]:
    """What a TbaBuffer stores: prompt id -> completion key -> sample.

    There is no public accessor for the stored samples, so this reads private state; it is the
    only place in this file that does.
    """
    with buf._lock:
        return {pid: {key: e.sample for key, e in bucket.items()} for pid, bucket in buf._entries.items()}


def uid_view(contents: dict[str, dict[tuple[int, ...], Sample]]) -> dict[str, dict[tuple[int, ...], str]]:
    return {pid: {key: uid(s) for key, s in bucket.items()} for pid, bucket in contents.items()}


# One group as a generator would emit it: (prompt, empty?, mixed versions?, K sample specs), with
# a sample spec = (extra lag when mixed, completion token, reward).
sample_spec = st.tuples(st.integers(0, 2), st.integers(0, 4), st.sampled_from([0.0, 0.5, 1.0]))
group_spec = st.tuples(
    st.sampled_from(PROMPT_IDS),
    st.integers(0, 7).map(lambda x: x == 0),  # 1 in 8 empty: every reward of the group failed
    st.integers(0, 3).map(lambda x: x == 0),  # 1 in 4 mixed: a weight sync landed mid-group
    st.lists(sample_spec, min_size=MAX_K, max_size=MAX_K),
)
# How many learner versions behind the pushing generator's weights are: mostly fresh, sometimes
# far behind (a slow generator), so that versions arrive out of order and some exceed max_lag.
weights_age = st.sampled_from([0, 0, 1, 1, 2, 3, 4, 6])


# The run itself: a list of operations, applied in order.
produce_op = st.tuples(st.just("produce"), weights_age, st.lists(group_spec, min_size=1, max_size=6))
# The learner steps its version once per batch it trains on; ``jump`` also moves it before a call
# now and then, so that drops happen in calls that return None too. It never goes backwards.
consume_op = st.tuples(st.just("consume"), st.integers(1, 3), st.sampled_from([0, 0, 0, 1, 2]))
run_ops = st.lists(st.one_of(produce_op, consume_op), min_size=20, max_size=60)


class _Run:
    """Generators and a learner around one buffer; subclasses check the buffer in push/pull/check.

    Operation lists drawn by ``@given`` rather than a ``RuleBasedStateMachine``: the stateful
    runner's swarm testing switches rules off per example, and at this example budget about half
    the runs were only ``sample`` calls on an empty buffer.
    """

    k = 1  # group size

    def __init__(self):
        self.learner_version = 0

    def make_groups(self, age: int, specs) -> list[Group]:
        """One generator's request: groups all from weights ``age`` versions old."""
        base = self.learner_version - age
        groups = []
        for pid, empty, mixed, sample_specs in specs:
            samples = [] if empty else [
                mk_sample(pid, max(0, base - (extra if mixed else 0)), [tok], reward)
                for extra, tok, reward in sample_specs[: self.k]
            ]  # [K] or []
            groups.append(Group(Prompt(pid, f"q {pid}"), samples))
        return groups

    def run(self, ops) -> None:
        for op in ops:
            if op[0] == "produce":
                self.push(self.make_groups(op[1], op[2]))
            else:
                _, num_groups, jump = op
                self.learner_version += jump
                if self.pull(num_groups, self.learner_version):
                    self.learner_version += 1
            self.check()

    def push(self, groups: list[Group]) -> None:
        raise NotImplementedError

    def pull(self, num_groups: int, learner_version: int) -> bool:
        """Sample and check; True when a batch came back."""
        raise NotImplementedError

    def check(self) -> None:
        """Invariants that hold after every operation."""


# ------------------------------------------------------------------------------------------ FIFO


class FifoRun(_Run):
    """FifoBuffer under random producers and a consumer.

    Checked on every returned batch (in this order, so a broken property fails on its own line):

    * shape: exactly ``num_groups`` groups, each exactly K samples of one prompt, each one of the
      groups a generator pushed, intact (the losses reshape rows to [B, K]);
    * ``batch.staleness`` is ``learner_version - sample.version``, prompt-major;
    * bounded staleness: no sample with ``learner_version - version > max_lag``, even in
      mixed-version groups (the group's version is its oldest sample);
    * use-once: no sample is handed out twice;
    * drop reporting: ``batch.dropped`` equals the samples dropped by every ``sample`` call since
      the previous returned batch, this call included. So at any time
      ``sum(batch.dropped) == stats()["dropped"] - (drops of the trailing None-returning calls)``;
    * a reference model (drop every too-stale group, then hand out the oldest fresh groups in
      arrival order, None while fewer than ``num_groups`` remain) predicts None-or-batch and the
      exact groups.

    After every step: samples added (in non-empty groups) == handed out + ``len(buffer)`` +
    ``stats()["dropped"]``, and the size/groups/dropped_groups stats match the model.
    """

    def __init__(self, max_lag: int, k: int):
        super().__init__()
        self.max_lag = max_lag
        self.k = k
        self.buf = FifoBuffer(max_lag=max_lag)
        self.queue: list[Group] = []  # model: pushed non-empty groups neither handed out nor dropped
        self.pushed_groups: set[tuple[str, ...]] = set()  # uids of every pushed group, in order
        self.added = 0  # samples in non-empty pushed groups
        self.handed_out: set[str] = set()
        self.model_dropped = self.model_dropped_groups = 0
        self.reported = 0  # sum of batch.dropped over returned batches
        self.unreported = 0  # stats()["dropped"] growth over calls since the last returned batch

    def push(self, groups):
        self.buf.add(groups)
        for g in groups:
            if g.samples:
                self.queue.append(g)
                self.pushed_groups.add(tuple(uid(s) for s in g.samples))
                self.added += len(g.samples)

    def pull(self, num_groups, learner_version):
        dropped_before = self.buf.stats()["dropped"]
        b = self.buf.sample(num_groups, learner_version)
        self.unreported += self.buf.stats()["dropped"] - dropped_before

        # Model: drop every group whose oldest sample is too stale, wherever it is in the queue.
        fresh = []
        for g in self.queue:
            if learner_version - min(s.version for s in g.samples) > self.max_lag:
                self.model_dropped += len(g.samples)
                self.model_dropped_groups += 1
            else:
                fresh.append(g)
        expected, self.queue = (None, fresh) if len(fresh) < num_groups else (fresh[:num_groups], fresh[num_groups:])

        if b is None:
            assert expected is None, f"None although {len(fresh)} fresh groups >= {num_groups} requested"
            return False
        assert len(b.groups) == num_groups
        for g in b.groups:
            assert len(g.samples) == self.k, "a group must hold exactly K samples"
            assert all(s.prompt_id == g.prompt.prompt_id for s in g.samples), "a group must be one prompt"
            assert tuple(uid(s) for s in g.samples) in self.pushed_groups, "groups must come out as pushed"
        assert b.staleness == [learner_version - s.version for g in b.groups for s in g.samples]
        assert max(b.staleness) <= self.max_lag, f"staleness {max(b.staleness)} > max_lag {self.max_lag}"
        out = [uid(s) for g in b.groups for s in g.samples]
        assert not self.handed_out.intersection(out), "a sample was handed out twice"
        self.handed_out.update(out)
        assert b.dropped == self.unreported, (
            f"batch.dropped={b.dropped}, but {self.unreported} samples were dropped since the last batch")
        self.reported += b.dropped
        self.unreported = 0
        assert expected is not None, f"a batch although only {len(fresh)} fresh groups < {num_groups}"
        assert [[uid(s) for s in g.samples] for g in b.groups] == [[uid(s) for s in g.samples] for g in expected], (
            "not the oldest fresh groups in arrival order")
        return True

    def check(self):
        s = self.buf.stats()
        assert self.added == len(self.handed_out) + len(self.buf) + s["dropped"], "samples not conserved"
        assert self.reported + self.unreported == s["dropped"]
        assert len(self.buf) == s["size"] == sum(len(g.samples) for g in self.queue)
        assert s["groups"] == len(self.queue)
        assert s["dropped"] == self.model_dropped and s["dropped_groups"] == self.model_dropped_groups


@FAST
@given(max_lag=st.integers(0, 3), k=st.integers(1, MAX_K), ops=run_ops)
def test_fifo_properties(max_lag, k, ops):
    """FifoBuffer: the properties listed in ``FifoRun``, over random runs."""
    FifoRun(max_lag, k).run(ops)


# ------------------------------------------------------------------------------------------- TBA


class _TbaModel:
    """TbaBuffer's storage policy restated from its docstring, with insertion times instead of an
    OrderedDict: per prompt, one entry per distinct completion; a duplicate with a version >= the
    stored one replaces it and counts as a new insertion, an older one is discarded; both count in
    ``duplicates``. A prompt over ``per_prompt_capacity`` loses its lowest (version, insertion)
    entry. At the end of each ``add`` the oldest insertions go until ``capacity`` holds."""

    def __init__(self, per_prompt_capacity: int, capacity: int):
        self.per_prompt_capacity = per_prompt_capacity
        self.capacity = capacity
        self.store: dict[str, dict[tuple[int, ...], tuple[Sample, int]]] = {}  # pid -> key -> (sample, time)
        self.time = 0
        self.duplicates = self.evicted = self.evicted_prompt_cap = 0

    def add(self, groups: list[Group]) -> None:
        for g in groups:
            for s in g.samples:
                self._insert(s)
        while sum(len(b) for b in self.store.values()) > self.capacity:
            pid, key = min(((p, k) for p, b in self.store.items() for k in b), key=lambda pk: self.store[pk[0]][pk[1]][1])
            self._remove(pid, key)
            self.evicted += 1

    def _insert(self, s: Sample) -> None:
        bucket = self.store.setdefault(s.prompt_id, {})
        key = tuple(s.completion_ids)
        if key in bucket:
            self.duplicates += 1
            if s.version < bucket[key][0].version:
                return
        bucket[key] = (s, self.time)
        self.time += 1
        if len(bucket) > self.per_prompt_capacity:
            victim = min(bucket, key=lambda k: (bucket[k][0].version, bucket[k][1]))
            self._remove(s.prompt_id, victim)
            self.evicted_prompt_cap += 1

    def _remove(self, pid: str, key: tuple[int, ...]) -> None:
        del self.store[pid][key]
        if not self.store[pid]:
            del self.store[pid]

    def uids(self) -> dict[str, dict[tuple[int, ...], str]]:
        return {pid: {key: uid(s) for key, (s, _) in bucket.items()} for pid, bucket in self.store.items()}


class TbaRun(_Run):
    """TbaBuffer under random producers and a consumer, with a twin buffer of the same seed fed
    the same calls.

    After every ``add``:

    * ``len(buffer) <= capacity`` and every prompt holds at most ``per_prompt_capacity`` samples;
    * dedup: no two stored samples of one prompt have the same completion ids;
    * newest version wins: a stored sample never has a later-arriving copy (same prompt and
      completion) of a version >= its own, and the version stored for a completion never
      decreases across an ``add``;
    * counts: samples added == stored + evicted + evicted_prompt_cap + duplicates (every sample
      either becomes an entry or is a duplicate; a duplicate leaves one entry, either itself or
      the copy it met; entries leave only by the two evictions);
    * the reference model ``_TbaModel`` predicts the exact stored samples (so both eviction
      orders: oldest insertion for the global cap, lowest (version, insertion) per prompt) and
      the evicted / evicted_prompt_cap / duplicates counters.

    On every ``sample``: None iff the buffer is empty; else ``num_groups`` groups, each exactly K
    samples of one prompt, all currently stored for that prompt, distinct when the prompt holds
    >= K and covering all of them otherwise; staleness matches; ``dropped == 0``; prompts do not
    repeat within a batch until all were used; with ``recency_prob == 1`` each round over the
    prompts takes the prompts holding the newest version first, and their groups hold the
    prompt's newest samples; the picks counters add up; sampling leaves storage untouched; and
    the twin returns the identical batch (reproducible for a fixed seed).
    """

    def __init__(self, k, per_prompt_capacity, capacity, recency_prob, inv_temp, seed):
        super().__init__()
        self.recency_prob = recency_prob
        self.k = k
        self.per_prompt_capacity = per_prompt_capacity
        self.capacity = capacity
        cfg = dict(group_size=k, recency_prob=recency_prob, inv_temp=inv_temp,
                   per_prompt_capacity=per_prompt_capacity, capacity=capacity, seed=seed)
        self.buf = TbaBuffer(**cfg)
        self.twin = TbaBuffer(**cfg)
        self.model = _TbaModel(per_prompt_capacity, capacity)
        self.added = 0
        self.slots = 0  # groups handed out over all batches
        self.arrival: dict[str, int] = {}  # uid -> arrival index
        self.copies: dict[tuple[str, tuple[int, ...]], list[tuple[int, int]]] = {}  # (pid, key) -> [(arrival, version)]

    def push(self, groups):
        before = tba_contents(self.buf)
        self.buf.add(groups)
        self.twin.add(groups)
        self.model.add(groups)
        for g in groups:
            for s in g.samples:
                self.arrival[uid(s)] = len(self.arrival)
                self.copies.setdefault((s.prompt_id, tuple(s.completion_ids)), []).append((self.arrival[uid(s)], s.version))
        self.added += sum(len(g.samples) for g in groups)
        after = tba_contents(self.buf)

        assert len(self.buf) <= self.capacity, f"{len(self.buf)} samples stored > capacity {self.capacity}"
        for pid, bucket in after.items():
            assert len(bucket) <= self.per_prompt_capacity, f"prompt {pid} holds {len(bucket)} samples"
        for pid, bucket in after.items():
            comps = [tuple(s.completion_ids) for s in bucket.values()]
            assert len(set(comps)) == len(comps), f"prompt {pid} stores a completion twice: {sorted(comps)}"
        for pid, bucket in after.items():
            for key, s in bucket.items():
                assert s.prompt_id == pid and tuple(s.completion_ids) == key
                later = [v for t, v in self.copies[(pid, key)] if t > self.arrival[uid(s)]]
                assert all(v < s.version for v in later), (
                    f"stored v{s.version} of {pid}/{key} although copies of versions {later} arrived later")
                if key in before.get(pid, {}):
                    assert s.version >= before[pid][key].version, "a stored completion went to an older version"
        s = self.buf.stats()
        assert self.added == len(self.buf) + s["evicted"] + s["evicted_prompt_cap"] + s["duplicates"]
        assert uid_view(after) == self.model.uids(), "stored samples differ from the reference model"
        assert (s["duplicates"], s["evicted"], s["evicted_prompt_cap"]) == (
            self.model.duplicates, self.model.evicted, self.model.evicted_prompt_cap)

    def pull(self, num_groups, learner_version):
        stored = tba_contents(self.buf)
        b = self.buf.sample(num_groups, learner_version)
        t = self.twin.sample(num_groups, learner_version)
        assert uid_view(tba_contents(self.buf)) == uid_view(stored), "sampling changed what is stored"
        if not stored:
            assert b is None and t is None
            return False
        assert b is not None, "None from a non-empty buffer"

        assert len(b.groups) == num_groups
        for g in b.groups:
            pid = g.prompt.prompt_id
            assert len(g.samples) == self.k, "a group must hold exactly K samples"
            assert all(s.prompt_id == pid for s in g.samples), "a group must be one prompt"
            assert pid in stored, f"group of prompt {pid}, which the buffer does not hold"
            held = {uid(s) for s in stored[pid].values()}
            got = [uid(s) for s in g.samples]
            assert held.issuperset(got), "a group holds a sample not stored for its prompt"
            if len(held) >= self.k:
                assert len(set(got)) == self.k, "repeats although the prompt holds >= K samples"
            else:
                assert set(got) == held, "a prompt holding < K samples must contribute all of them"
        assert b.staleness == [learner_version - s.version for g in b.groups for s in g.samples]
        assert b.dropped == 0

        order = [g.prompt.prompt_id for g in b.groups]
        n_prompts = len(stored)
        for c in range(0, num_groups, n_prompts):
            part = order[c:c + n_prompts]
            assert len(set(part)) == len(part), f"prompt repeated before all {n_prompts} were used: {order}"
        if self.recency_prob == 1.0:
            newest = max(s.version for bucket in stored.values() for s in bucket.values())
            recent = {p for p, bucket in stored.items() if max(s.version for s in bucket.values()) == newest}
            for i, pid in enumerate(order):
                assert (i % n_prompts < len(recent)) == (pid in recent), (
                    f"recent prompts {sorted(recent)} must lead each round over the prompts: {order}")
            for g in b.groups:
                pool = sorted((s.version for s in stored[g.prompt.prompt_id].values()), reverse=True)
                if g.prompt.prompt_id in recent and len(pool) >= self.k:
                    assert sorted((s.version for s in g.samples), reverse=True) == pool[: self.k], (
                        "a recency group must hold the prompt's newest samples")

        self.slots += num_groups
        s = self.buf.stats()
        assert s["recency_picks"] + s["reward_picks"] == self.slots
        assert s["recency_fallbacks"] <= s["reward_picks"]
        if self.recency_prob == 0.0:
            assert s["recency_picks"] == s["recency_fallbacks"] == 0
        if self.recency_prob == 1.0:
            assert s["reward_picks"] == s["recency_fallbacks"]

        assert batch_key(t) == batch_key(b), "same seed, same calls, different batch"
        return True

    def check(self):
        s = self.buf.stats()
        assert len(self.buf) == s["size"] <= self.capacity
        assert s["prompts"] == len(tba_contents(self.buf))


@FAST
@given(
    k=st.integers(1, MAX_K),
    per_prompt_capacity=st.integers(1, 5),
    capacity=st.integers(1, 12),
    recency_prob=st.sampled_from([0.0, 0.5, 1.0]),
    inv_temp=st.sampled_from([0.0, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
    ops=run_ops,
)
def test_tba_properties(k, per_prompt_capacity, capacity, recency_prob, inv_temp, seed, ops):
    """TbaBuffer: the properties listed in ``TbaRun``, over random runs."""
    TbaRun(k, per_prompt_capacity, capacity, recency_prob, inv_temp, seed).run(ops)


def tba(**kw) -> TbaBuffer:
    args = dict(group_size=2, recency_prob=0.5, inv_temp=0.0, per_prompt_capacity=1_000, capacity=10_000, seed=0)
    args.update(kw)
    return TbaBuffer(**args)


@FAST
@given(
    arrivals=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2), st.integers(0, 5)), min_size=1, max_size=20),
    cuts=st.lists(st.integers(0, 20), max_size=4),
)
def test_tba_duplicate_keeps_newest_version(arrivals, cuts):
    """Dedup, exactly: with no eviction, each (prompt, completion) is stored once, as its newest
    version; among copies of that version the last to arrive (a copy of equal version replaces,
    an older one never does, whatever the arrival order). The same completion under two prompts
    is two entries. Every copy beyond the first is counted in ``duplicates``."""
    buf = tba()
    samples = [mk_sample(pid, v, [tok]) for pid, tok, v in arrivals]
    for part in chunks(samples, cuts):
        buf.add([one_group(s) for s in part])
    expected: dict[str, dict[tuple[int, ...], str]] = {}
    best: dict[tuple[str, tuple[int, ...]], Sample] = {}
    for s in samples:
        k = (s.prompt_id, tuple(s.completion_ids))
        if k not in best or s.version >= best[k].version:
            best[k] = s
    for (pid, key), s in best.items():
        expected.setdefault(pid, {})[key] = uid(s)
    assert uid_view(tba_contents(buf)) == expected
    assert buf.stats()["duplicates"] == len(samples) - len(best)
    assert len(buf) == len(best)


@FAST
@given(
    versions=st.lists(st.integers(0, 5), min_size=1, max_size=25),
    capacity=st.integers(1, 8),
    cuts=st.lists(st.integers(0, 25), max_size=5),
)
def test_tba_global_capacity_evicts_oldest_insertions(versions, capacity, cuts):
    """Global cap, unique completions: whatever the versions (random, so not in insertion order)
    and however the arrivals are split into ``add`` calls, the buffer ends up holding exactly the
    last ``capacity`` arrivals: eviction follows insertion order, not version."""
    buf = tba(capacity=capacity)
    samples = [mk_sample(f"p{i % 3}", v, [i]) for i, v in enumerate(versions)]
    for part in chunks(samples, cuts):
        buf.add([one_group(s) for s in part])
        assert len(buf) <= capacity
    kept = {uid(s) for bucket in tba_contents(buf).values() for s in bucket.values()}
    assert kept == {uid(s) for s in samples[-capacity:]}
    assert buf.stats()["evicted"] == max(0, len(samples) - capacity)


@FAST
@given(
    keys=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=25),
    capacity=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 25), max_size=5),
)
def test_tba_global_capacity_refreshed_duplicate_counts_as_new(keys, capacity, cuts):
    """Global cap with duplicates: a copy that replaces the stored one (here every copy does,
    versions grow with arrival) moves its entry to the newest insertion, so the buffer keeps the
    ``capacity`` (prompt, completion) pairs that arrived most recently, each as its last copy."""
    buf = tba(capacity=capacity)
    samples = [mk_sample(f"p{p}", i, [tok]) for i, (p, tok) in enumerate(keys)]
    for part in chunks(samples, cuts):
        buf.add([one_group(s) for s in part])
    last: dict[tuple[str, tuple[int, ...]], Sample] = {}
    for s in samples:
        k = (s.prompt_id, tuple(s.completion_ids))
        last.pop(k, None)
        last[k] = s  # dict order: by last arrival
    kept = list(last.values())[-capacity:]
    assert sorted(uid(s) for bucket in tba_contents(buf).values() for s in bucket.values()) == sorted(uid(s) for s in kept)


@FAST
@given(
    arrivals=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 6)), min_size=1, max_size=25),
    per_prompt_capacity=st.integers(1, 4),
    cuts=st.lists(st.integers(0, 25), max_size=5),
)
def test_tba_per_prompt_capacity_keeps_highest_version_then_latest(arrivals, per_prompt_capacity, cuts):
    """Per-prompt cap, unique completions: each prompt keeps its ``per_prompt_capacity`` samples
    that are highest by (version, arrival): a late-arriving stale sample is the one to go, and
    among equal versions the earliest arrival goes first. ``evicted_prompt_cap`` counts the rest."""
    buf = tba(per_prompt_capacity=per_prompt_capacity)
    samples = [mk_sample(f"p{p}", v, [i]) for i, (p, v) in enumerate(arrivals)]
    for part in chunks(samples, cuts):
        buf.add([one_group(s) for s in part])
    expected, evicted = {}, 0
    for pid in {s.prompt_id for s in samples}:
        mine = [(s.version, i, s) for i, s in enumerate(samples) if s.prompt_id == pid]
        top = sorted(mine, key=lambda x: x[:2], reverse=True)[:per_prompt_capacity]
        expected[pid] = {tuple(s.completion_ids): uid(s) for _, _, s in top}
        evicted += len(mine) - len(top)
    assert uid_view(tba_contents(buf)) == expected
    assert buf.stats()["evicted_prompt_cap"] == evicted


op_spec = st.one_of(
    st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 4),
                                                 st.sampled_from([0.0, 1.0])), max_size=6)),
    st.tuples(st.just("sample"), st.integers(1, 4), st.integers(0, 6)),
)


@FAST
@given(
    ops=st.lists(op_spec, min_size=1, max_size=12),
    k=st.integers(1, 3),
    recency_prob=st.sampled_from([0.0, 0.5, 1.0]),
    inv_temp=st.sampled_from([0.0, 2.0]),
    capacity=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_tba_sampling_reproducible_for_fixed_seed(ops, k, recency_prob, inv_temp, capacity, seed):
    """Reproducibility: two buffers with the same seed, fed the same ``add``/``sample`` calls one
    after the other, return identical batches, even when the second run also draws from the
    global ``random`` module in between (so the buffer must use only its own seeded generator)."""
    adds = {i: [one_group(mk_sample(f"p{p}", v, [tok], r)) for p, tok, v, r in op[1]]
            for i, op in enumerate(ops) if op[0] == "add"}  # the same sample objects for both runs

    def run(disturb: bool):
        buf = TbaBuffer(group_size=k, recency_prob=recency_prob, inv_temp=inv_temp, per_prompt_capacity=3,
                        capacity=capacity, seed=seed)
        out = []
        for i, op in enumerate(ops):
            if disturb:
                random.random()
            if op[0] == "add":
                buf.add(adds[i])
            else:
                out.append(batch_key(buf.sample(op[1], op[2])))
        return out

    assert run(disturb=False) == run(disturb=True)
