"""The metrics row of one learner step: a pure function of the step's results.

One row per step goes to ``metrics.jsonl`` (and TensorBoard / W&B). The keys and their order are
the file's format: ``step, wall_time_s, samples_seen, reward_mean, fresh_reward_mean``, the
custom task's ``rewards/<name>/mean``, ``loss, kl``, staleness, the run totals (``*_total``),
throughput and sync times, then the learner's other metrics and ``buffer/<stat>``.
"""

from __future__ import annotations

from asyncrl.runtime.stats import RunStats
from asyncrl.types import GenStats, Group


def measures_the_clock(key: str) -> bool:
    """Whether metrics key ``key`` is measured with this machine's clock (seconds, rates, busy
    shares): it differs between two runs of the same seed, resumed or not, so comparisons of runs
    leave it out."""
    return key.endswith("_s") or key.endswith("_per_s") or key.endswith("_share")


def reward_parts(replies: list[GenStats]) -> dict[str, float]:
    """Each reward function's mean over the fresh samples of ``replies`` (the custom task's
    ``rewards/<name>/mean``, as TRL names it); NaN for a function that scored nothing."""
    parts: dict[str, list[float]] = {}
    for st in replies:
        for name, (total, count) in st.reward_components.items():
            acc = parts.setdefault(name, [0.0, 0])
            acc[0] += total
            acc[1] += count
    return {f"rewards/{k}/mean": (a / n if n else float("nan")) for k, (a, n) in parts.items()}


def token_staleness(batch) -> dict[str, float]:
    """In-flight updates: staleness per token (learner version at sampling - the version of the
    weights that sampled the token) over the batch's completion tokens, and the share of samples
    whose tokens come from more than one version."""
    stale: list[int] = []
    mixed = n = 0
    for s, sample_staleness in zip((s for g in batch.groups for s in g.samples), batch.staleness):
        learner_version = sample_staleness + s.version  # batch.staleness = learner version - s.version
        versions = s.versions_of_tokens()
        stale.extend(learner_version - v for v in versions)
        mixed += len(set(versions)) > 1
        n += 1
    return {"token_staleness_mean": sum(stale) / len(stale) if stale else 0.0,
            "token_staleness_max": max(stale) if stale else 0,
            "mixed_version_share": mixed / n if n else 0.0}


def step_row(*, step: int, wall_s: float, stats: RunStats, batch, fresh: list[Group], replies: list[GenStats],
             learner_metrics: dict, skipped: bool, sync_s: float, sync_bytes: int, wait_s: float,
             buffer_stats: dict, extra: dict | None = None, produced: int = 0,
             generator_busy_share: float = 0.0, episodes: bool = False) -> dict:
    """The row of learner step ``step``. ``batch``: what it trained on (its groups and staleness);
    ``fresh``: the groups of the request taken this step; ``replies``: the stats of the replies
    accepted since the previous step; ``learner_metrics``: ``Learner.step``'s dict without
    ``skipped_update`` (not modified); ``stats``: the run totals after this step; ``extra``: more
    entries (dynamic sampling's); ``produced``: samples generated since the previous row;
    ``generator_busy_share``: the generators' sampling + scoring seconds since the previous row
    over num_generators x the wall seconds in between (1 = never idle); ``episodes``: a multi-turn
    environment's run, whose rows carry :func:`episode_stats`."""
    m = dict(learner_metrics)
    gen_t = sum(s.gen_time_s for s in replies)
    gen_tok = sum(s.tokens for s in replies)
    fresh_rewards = [s.reward for g in fresh for s in g.samples]
    rewards = [s.reward for g in batch.groups for s in g.samples]
    return {
        "step": step,
        "wall_time_s": wall_s,
        "samples_seen": stats.samples_seen,
        "reward_mean": sum(rewards) / len(rewards),
        # NaN (null in metrics.jsonl) when reward_errors=skip dropped every group of the request
        "fresh_reward_mean": sum(fresh_rewards) / len(fresh_rewards) if fresh_rewards else float("nan"),
        **reward_parts(replies),
        "loss": m.pop("loss"),
        "kl": m.pop("kl"),
        "staleness_mean": batch.staleness_mean,
        "staleness_max": batch.staleness_max,
        "dropped_total": stats.dropped,
        "reward_errors_total": stats.reward_errors,
        "generator_restarts_total": stats.generator_restarts,
        "requests_redispatched_total": stats.requests_redispatched,
        "skipped_update": int(skipped),
        "skipped_updates_total": stats.skipped_updates,
        "gen_tokens_per_s": gen_tok / gen_t if gen_t > 0 else 0.0,
        "learner_tokens_per_s": m.pop("learner_tokens_per_s"),
        "sync_time_s": sync_s,
        "sync_bytes": sync_bytes,
        "wait_time_s": wait_s,
        **m,
        **{f"buffer/{k}": v for k, v in buffer_stats.items()},
        "samples_produced": produced,
        "generator_busy_share": generator_busy_share,
        **(extra or {}),  # dynamic sampling's entries, when it is on
        **(episode_stats(replies) if episodes else {}),
    }


def episode_stats(replies: list[GenStats]) -> dict[str, float]:
    """Multi-turn environments: policy turns per episode and the share of episodes cut by
    ``max_turns`` / ``max_episode_tokens`` / the context, over the replies accepted since the
    previous row; NaN (null in metrics.jsonl) when no reply came (the step trained on buffered
    samples), so every row has the same keys."""
    episodes = sum(s.episodes for s in replies)
    if not episodes:
        return {"episode_turns_mean": float("nan"), "episode_truncated_mean": float("nan")}
    return {"episode_turns_mean": sum(s.turns for s in replies) / episodes,
            "episode_truncated_mean": sum(s.truncated for s in replies) / episodes}
