"""Tests for the replay buffers (FIFO with bounded staleness, TBA per-prompt replay).

TBA = Bartoldson et al. 2025, "Trajectory Balance with Asynchrony" (arXiv:2503.18929).
Statistical tests use fixed seeds, so they are deterministic; tolerances are still set from the
sampling error of the draw count so that a correct implementation passes for any seed.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
from collections import Counter

import pytest

from asyncrl.buffer import BufferBatch, FifoBuffer, ReplayBuffer, TbaBuffer, make_buffer
from asyncrl.types import Group, Prompt, Sample

_ids = itertools.count(1)  # fresh completion ids so unrelated samples never collapse as duplicates


def mk_sample(pid: str, version: int, reward: float = 0.0, comp: list[int] | None = None, lp: float = -0.5) -> Sample:
    comp = [next(_ids)] if comp is None else comp  # [C]
    return Sample(
        prompt_id=pid,
        prompt_ids=[7, 8],  # [P]
        completion_ids=list(comp),  # [C]
        behaviour_logprobs=[lp] * len(comp),  # [C]
        reward=reward,
        version=version,
        finished=True,
    )


def mk_group(pid: str, versions: list[int], rewards: list[float] | None = None) -> Group:
    rewards = [0.0] * len(versions) if rewards is None else rewards
    samples = [mk_sample(pid, v, r) for v, r in zip(versions, rewards)]  # [K]
    return Group(prompt=Prompt(prompt_id=pid, text=f"q {pid}"), samples=samples)


def tba(**kw) -> TbaBuffer:
    args = dict(group_size=4, recency_prob=0.0, inv_temp=0.0, per_prompt_capacity=100, capacity=10_000, seed=0)
    args.update(kw)
    return TbaBuffer(**args)


def picks(buf: TbaBuffer, n: int, learner_version: int = 10) -> Counter:
    """Prompt ids of n single-group batches; single groups keep draws independent (no in-batch exclusion)."""
    out: Counter = Counter()
    for _ in range(n):
        b = buf.sample(1, learner_version)
        out[b.groups[0].prompt.prompt_id] += 1
    return out


def chi_square(counts: Counter, probs: dict[str, float], n: int) -> float:
    return sum((counts[k] - n * p) ** 2 / (n * p) for k, p in probs.items())


# Upper 0.1% points of chi-square; a correct sampler exceeds them 1 time in 1000 seeds.
CHI2_999 = {2: 13.82, 3: 16.27, 4: 18.47}


# ------------------------------------------------------------------------------------------ FIFO


def test_fifo_order_and_single_use():
    buf = FifoBuffer(max_lag=100)
    buf.add([mk_group(f"p{i}", [0, 0]) for i in range(5)])
    assert len(buf) == 10
    b1 = buf.sample(2, learner_version=0)
    b2 = buf.sample(2, learner_version=0)
    assert [g.prompt.prompt_id for g in b1.groups] == ["p0", "p1"]
    assert [g.prompt.prompt_id for g in b2.groups] == ["p2", "p3"]
    assert len(buf) == 2
    # One group left: a request for two must not consume it.
    assert buf.sample(2, learner_version=0) is None
    assert len(buf) == 2
    b3 = buf.sample(1, learner_version=0)
    assert [g.prompt.prompt_id for g in b3.groups] == ["p4"]
    assert len(buf) == 0
    assert buf.sample(1, learner_version=0) is None


def test_fifo_staleness_accounting():
    buf = FifoBuffer(max_lag=10)
    buf.add([mk_group("a", [2, 3]), mk_group("b", [4, 5])])
    b = buf.sample(2, learner_version=5)
    assert b.staleness == [3, 2, 1, 0]  # [B*K] prompt-major
    assert b.staleness_mean == pytest.approx(1.5)
    assert b.staleness_max == 3
    assert b.num_samples == 4
    assert b.dropped == 0


def test_batch_staleness_properties_on_empty():
    b = BufferBatch(groups=[], staleness=[], dropped=0)
    assert b.staleness_mean == 0.0 and b.staleness_max == 0


def test_fifo_drops_stale_and_counts_them():
    buf = FifoBuffer(max_lag=2)
    # "mixed" has one fresh sample but its oldest is too stale: the whole group must go.
    buf.add([mk_group("old", [0, 0]), mk_group("mixed", [1, 4]), mk_group("ok2", [2, 2]), mk_group("ok4", [4, 4])])
    b = buf.sample(2, learner_version=4)
    assert [g.prompt.prompt_id for g in b.groups] == ["ok2", "ok4"]
    assert b.dropped == 4
    assert b.staleness_max <= 2
    s = buf.stats()
    assert s["dropped"] == 4 and s["dropped_groups"] == 2
    assert len(buf) == 0


def test_fifo_none_after_dropping_reports_drops_in_next_batch():
    buf = FifoBuffer(max_lag=1)
    buf.add([mk_group("stale", [0, 0, 0]), mk_group("fresh", [5, 5])])
    assert buf.sample(2, learner_version=5) is None  # only one fresh group
    assert len(buf) == 2  # stale samples gone, fresh group kept
    assert buf.stats()["dropped"] == 3
    b = buf.sample(1, learner_version=5)
    assert [g.prompt.prompt_id for g in b.groups] == ["fresh"]
    assert b.dropped == 3  # drops from the None call are not lost from per-batch accounting


def test_fifo_never_exceeds_max_lag_and_conserves_samples():
    rng = random.Random(1)
    max_lag = 3
    buf = FifoBuffer(max_lag=max_lag)
    added = returned = dropped = 0
    learner = 0
    for _ in range(200):
        # Out-of-order versions, as from several generators running different weights.
        groups = [mk_group(f"p{rng.random()}", [max(0, learner - rng.randint(0, 6))] * rng.randint(1, 4))
                  for _ in range(rng.randint(0, 3))]
        buf.add(groups)
        added += sum(len(g.samples) for g in groups)
        b = buf.sample(rng.randint(1, 3), learner)
        if b is not None:
            assert len(b.staleness) == sum(len(g.samples) for g in b.groups)  # [B*K]
            assert all(0 <= s <= max_lag for s in b.staleness)
            returned += b.num_samples
            dropped += b.dropped
            learner += 1
    assert dropped > 0  # the scenario must actually exercise dropping
    assert dropped <= buf.stats()["dropped"]  # the rest is pending for the next returned batch
    assert added == returned + buf.stats()["dropped"] + len(buf)


# ------------------------------------------------------------------------------------------- TBA


def test_tba_empty_returns_none():
    assert tba().sample(2, learner_version=0) is None


def test_tba_duplicates_collapse_keep_newest():
    buf = tba(group_size=2, recency_prob=0.0)
    g = Group(Prompt("p", "q"), [mk_sample("p", 0, comp=[1]), mk_sample("p", 0, comp=[2]), mk_sample("p", 0, comp=[1])])
    buf.add([g])
    assert len(buf) == 2
    assert buf.stats()["duplicates"] == 1
    buf.add([Group(Prompt("p", "q"), [mk_sample("p", 3, comp=[2], lp=-0.1)])])
    # A copy from older weights arriving late must not overwrite the newer one.
    buf.add([Group(Prompt("p", "q"), [mk_sample("p", 1, comp=[2], lp=-0.9)])])
    assert len(buf) == 2
    assert buf.stats()["duplicates"] == 3
    b = buf.sample(1, learner_version=3)
    by_comp = {tuple(s.completion_ids): s for s in b.groups[0].samples}  # [K] drawn without replacement
    assert set(by_comp) == {(1,), (2,)}
    assert by_comp[(2,)].version == 3 and by_comp[(2,)].behaviour_logprobs == [-0.1]
    assert b.staleness == [3 - s.version for s in b.groups[0].samples]  # [B*K]


def test_tba_per_prompt_capacity_keeps_newest():
    buf = tba(group_size=3, per_prompt_capacity=3)
    for v in range(5):
        buf.add([mk_group("p", [v])])
    buf.add([mk_group("p", [1])])  # late arrival from old weights: it is the oldest, so it goes
    assert len(buf) == 3
    assert buf.stats()["evicted_prompt_cap"] == 3
    b = buf.sample(1, learner_version=5)
    assert sorted(s.version for s in b.groups[0].samples) == [2, 3, 4]


def test_tba_global_capacity_evicts_oldest_insertions():
    buf = tba(group_size=2, capacity=5)
    # Versions are deliberately the reverse of insertion order: eviction must follow insertion.
    buf.add([mk_group("a", [9, 9])])
    buf.add([mk_group("b", [1, 1])])
    buf.add([mk_group("c", [0, 0])])
    assert len(buf) == 5 and buf.stats()["evicted"] == 1
    buf.add([mk_group("d", [0, 0])])
    s = buf.stats()
    assert len(buf) == 5 and s["evicted"] == 3
    assert s["prompts"] == 3  # "a" emptied and removed
    seen = picks(buf, 200)
    assert set(seen) == {"b", "c", "d"}


def test_tba_groups_have_exactly_k_samples_of_one_prompt():
    k = 4
    buf = tba(group_size=k, recency_prob=0.5, seed=3)
    buf.add([mk_group("big", [0] * 6), mk_group("small", [1, 1])])  # 6 >= K, 2 < K stored
    stored = {"big": 6, "small": 2}
    for _ in range(50):
        b = buf.sample(2, learner_version=4)
        assert len(b.groups) == 2 and len(b.staleness) == 2 * k  # [B*K]
        for gi, g in enumerate(b.groups):
            pid = g.prompt.prompt_id
            assert len(g.samples) == k
            assert all(s.prompt_id == pid for s in g.samples)
            comps = [tuple(s.completion_ids) for s in g.samples]
            if stored[pid] >= k:
                assert len(set(comps)) == k  # without replacement
            else:
                assert len(set(comps)) == stored[pid]  # every stored sample, then refills
            assert b.staleness[gi * k:(gi + 1) * k] == [4 - s.version for s in g.samples]


def test_tba_prompts_without_replacement_within_batch():
    # Large inv_temp would make a with-replacement sampler pick "best" for every slot.
    buf = tba(group_size=1, recency_prob=0.5, inv_temp=50.0, seed=1)
    buf.add([mk_group(f"p{i}", [i % 2], [float(i == 0)]) for i in range(5)])
    for _ in range(50):
        b = buf.sample(5, learner_version=2)
        assert sorted(g.prompt.prompt_id for g in b.groups) == [f"p{i}" for i in range(5)]
    b = buf.sample(7, learner_version=2)  # wider than the buffer: every prompt, then repeats
    ids = [g.prompt.prompt_id for g in b.groups]
    assert len(ids) == 7 and set(ids) == {f"p{i}" for i in range(5)}


def test_tba_m1_only_latest_sync_prompts_and_newest_samples_first():
    buf = tba(group_size=2, recency_prob=1.0, seed=5)
    buf.add([mk_group(f"old{i}", [0, 0, 0, 0]) for i in range(3)])
    buf.add([mk_group("mix", [0, 0, 0])])
    buf.add([mk_group("mix", [2])])  # one sample from the latest sync makes "mix" recent
    buf.add([mk_group("new0", [2, 2]), mk_group("new1", [1, 2])])
    n = 3000
    counts = picks(buf, n, learner_version=3)
    recent = {"mix", "new0", "new1"}
    assert set(counts) == recent
    assert chi_square(counts, {p: 1 / 3 for p in recent}, n) < CHI2_999[2]  # uniform among recent
    for _ in range(100):
        b = buf.sample(3, learner_version=3)
        assert {g.prompt.prompt_id for g in b.groups} == recent
        mix = next(g for g in b.groups if g.prompt.prompt_id == "mix")
        # The fresh sample must always be in a recency group, not left to a 1-in-2 chance.
        assert sorted(s.version for s in mix.samples) == [0, 2]


def test_tba_m0_high_inv_temp_prefers_best_mean_reward():
    buf = tba(group_size=4, recency_prob=0.0, inv_temp=20.0, seed=2)
    # "lucky" matches "best" on max reward but not on mean: scoring must use the mean.
    buf.add([
        mk_group("best", [0] * 4, [1.0, 1.0, 1.0, 1.0]),
        mk_group("lucky", [1] * 4, [1.0, 0.0, 0.0, 0.0]),
        mk_group("zero", [1] * 4, [0.0] * 4),
    ])
    n = 2000
    counts = picks(buf, n, learner_version=2)
    assert counts["best"] / n > 0.99  # softmax gives 1 - ~3e-7


def test_tba_m0_matches_softmax_of_mean_reward():
    inv_temp = 2.0
    buf = tba(group_size=2, recency_prob=0.0, inv_temp=inv_temp, seed=4)
    means = {"a": 0.0, "b": 0.5, "c": 1.0}
    buf.add([mk_group("a", [0, 0], [0.0, 0.0]), mk_group("b", [1, 1], [0.0, 1.0]), mk_group("c", [0, 0], [1.0, 1.0])])
    z = sum(math.exp(inv_temp * m) for m in means.values())
    probs = {p: math.exp(inv_temp * m) / z for p, m in means.items()}
    n = 4000
    assert chi_square(picks(buf, n), probs, n) < CHI2_999[2]


def test_tba_inv_temp_zero_is_uniform():
    buf = tba(group_size=2, recency_prob=0.0, inv_temp=0.0, seed=6)
    pids = [f"p{i}" for i in range(5)]
    # Rewards and versions differ so that any hidden reward or recency bias shows up.
    buf.add([mk_group(p, [i, i], [i / 4, i / 4]) for i, p in enumerate(pids)])
    n = 4000
    assert chi_square(picks(buf, n), {p: 0.2 for p in pids}, n) < CHI2_999[4]


def test_tba_recency_frequency_matches_m():
    # m = 0.3 rather than 0.5 so that swapping the two branches (pick recent with 1 - m) fails.
    m = 0.3
    buf = tba(group_size=2, recency_prob=m, inv_temp=0.0, seed=7)
    buf.add([mk_group(f"old{i}", [0, 0]) for i in range(4)] + [mk_group("new", [1, 1])])
    n = 4000
    counts = picks(buf, n, learner_version=1)
    # A recency pick always lands on "new"; a reward pick does 1 time in 5.
    p = m + (1 - m) / 5
    se = math.sqrt(p * (1 - p) / n)
    assert abs(counts["new"] / n - p) < 3 * se
    se_m = math.sqrt(m * (1 - m) / n)
    assert abs(buf.stats()["recency_picks"] / n - m) < 3 * se_m
    assert buf.stats()["recency_picks"] + buf.stats()["reward_picks"] == n


def test_tba_recency_fallback_when_recent_pool_exhausted():
    buf = tba(group_size=1, recency_prob=1.0, seed=8)
    buf.add([mk_group("old0", [0]), mk_group("old1", [0]), mk_group("new", [1])])
    b = buf.sample(3, learner_version=1)
    assert sorted(g.prompt.prompt_id for g in b.groups) == ["new", "old0", "old1"]
    s = buf.stats()
    assert s["recency_picks"] == 1 and s["recency_fallbacks"] == 2


def test_tba_deterministic_given_seed():
    def run(seed: int) -> list[list[tuple[str, tuple[int, ...]]]]:
        buf = tba(group_size=2, recency_prob=0.5, inv_temp=1.0, seed=seed)
        buf.add([Group(Prompt(f"p{i}", ""), [mk_sample(f"p{i}", i % 3, i / 10, comp=[i, j]) for j in range(3)])
                 for i in range(8)])
        return [[(g.prompt.prompt_id, tuple(s.completion_ids)) for g in buf.sample(3, 5).groups for s in g.samples]
                for _ in range(30)]

    assert run(11) == run(11)
    assert run(11) != run(12)


# ------------------------------------------------------------------------------------ dispatch etc.


def test_make_buffer_dispatch():
    kw = dict(max_lag=2, group_size=4, recency_prob=0.5, inv_temp=1.0, per_prompt_capacity=8, capacity=100, seed=0)
    f = make_buffer("fifo", **kw)
    t = make_buffer("tba", **kw)
    assert isinstance(f, FifoBuffer) and f.max_lag == 2
    assert isinstance(t, TbaBuffer) and t.group_size == 4 and t.capacity == 100 and t.recency_prob == 0.5
    assert isinstance(f, ReplayBuffer) and isinstance(t, ReplayBuffer)
    with pytest.raises(ValueError, match="fifo"):
        make_buffer("lifo", **kw)


@pytest.mark.parametrize("kw", [dict(group_size=0), dict(recency_prob=1.5), dict(per_prompt_capacity=0), dict(capacity=0)])
def test_tba_rejects_bad_config(kw):
    with pytest.raises(ValueError):
        tba(**kw)


def test_fifo_producer_consumer_threads():
    buf = FifoBuffer(max_lag=1_000)
    n_groups = 300
    got: list[str] = []

    def produce():
        for i in range(n_groups):
            buf.add([mk_group(f"p{i}", [0, 0])])

    t = threading.Thread(target=produce)
    t.start()
    while True:
        b = buf.sample(3, learner_version=0) or buf.sample(1, learner_version=0)
        if b is None:
            if not t.is_alive() and len(buf) == 0:
                break
            continue
        got.extend(g.prompt.prompt_id for g in b.groups)
    t.join()
    assert got == [f"p{i}" for i in range(n_groups)]  # each exactly once, in order
    assert len(buf) == 0
