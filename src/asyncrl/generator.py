"""The generator role: prompts -> engine (K samples each) -> task reward -> ``Group``s.

Reward shaping for every task happens here, after the task's reward (see :func:`asyncrl.rewards.shaped_reward`):
``length_penalty`` per completion token and ``missing_eos_penalty`` for a completion cut at
``max_new_tokens``. ``Sample.reward`` (what the losses and the tba buffer see, and ``reward_mean``
in metrics.jsonl) is the shaped value; evaluation reports the task's own metrics, unshaped.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass

import torch

from asyncrl.engines.base import Engine
from asyncrl.envs.base import is_environment
from asyncrl.policy import completion_logprobs, encode_prompts, pack
from asyncrl.rewards import component_sums, completion_tokens, shaped_reward
from asyncrl.rollout import Episode, ObservationRenderer, TaskEnvironment, episode_limits, run_episodes
from asyncrl.tasks.base import RewardError, Task
from asyncrl.types import GenStats, Group, Prompt, Sample


# reward_errors=skip: this many requests in a row with every group dropped means the reward function
# is broken, not unlucky; stop instead of generating forever.
log = logging.getLogger(__name__)

MAX_FAILED_REQUESTS = 3


@dataclass(frozen=True)
class GeneratorSettings:
    """The generator's own settings, read from the config in one place
    (:func:`asyncrl.runtime.worker.build_generator`)."""

    samples_per_prompt: int  # K completions per prompt (one group)
    seed: int  # seed of the task's training-prompt stream
    chat_template: str = "auto"
    temperature: float = 1.0  # for the reference log-probs; the engine samples at its own
    reward_errors: str = "stop"  # "stop" or "skip" (see checked_rewards)
    length_penalty: float = 0.0
    missing_eos_penalty: float = 0.0
    shard: tuple[int, int] | None = None  # (slot, shards): draw only that shard's prompts; None = all
    inflight_updates: bool = False  # take weight updates between decoding steps (vllm engine)
    max_turns: int | None = None  # environments: policy turns per episode; None = the environment's own
    max_episode_tokens: int | None = None  # environments: tokens after the prompt; None = no limit
    context_tokens: int | None = None  # the model's context (max_position_embeddings); None = unknown
    max_new_tokens: int = 0  # tokens a turn may take (the engine's limit), for the context check


def in_shard(task, shard: tuple[int, int]):
    """Whether a prompt belongs to ``shard`` = (slot, n): a task with a prompt list
    (``train_pool``) splits it by position, every n-th prompt from ``slot``; any other task
    (procedural prompts) by a stable hash of the prompt id (crc32, the same in every process)."""
    slot, n = shard
    pool = getattr(task, "train_pool", None)
    if pool is not None:
        prompts = pool()
        if len(prompts) < n:
            raise ValueError(f"prompt_sharding splits {len(prompts)} training prompts into {n} shards (one per "
                             "generator): it needs at least num_generators prompts")
        mine = {p.prompt_id for p in prompts[slot::n]}
        return lambda p: p.prompt_id in mine
    return lambda p: zlib.crc32(p.prompt_id.encode()) % n == slot


class Generator:
    def __init__(self, engine: Engine, task: Task, tokenizer, settings: GeneratorSettings, *, ref_model=None,
                 rng: torch.Generator | None = None):
        """``rng``: the random state this generator samples from, shared with its engine (the hf
        engine borrows the process RNG around each sampling call and gives it back unchanged); its
        state travels in the worker's ``GeneratorState``. None: the engine samples from the process
        RNG as it finds it (tests that build a Generator around their own engine)."""
        self.engine = engine
        self.settings = settings
        self.length_penalty = settings.length_penalty
        self.missing_eos_penalty = settings.missing_eos_penalty
        self.reward_errors = settings.reward_errors
        self._failed_requests = 0  # consecutive requests whose every group was dropped
        self._warned = False
        self.ref_model = ref_model  # frozen initial policy; None = the learner computes reference log-probs
        self.temperature = settings.temperature
        self.task = task
        self.tokenizer = tokenizer
        self.k = settings.samples_per_prompt
        self.chat_template = settings.chat_template
        self.rng = rng
        self._prompt_seed = settings.seed
        self._prompts_drawn = 0
        self._keep = in_shard(task, settings.shard) if settings.shard is not None else None
        self._prompts = self._stream(settings.seed)
        # a task is the one-turn environment; an environment (asyncrl.envs) runs as it is
        self.env = task if is_environment(task) else TaskEnvironment(task)
        self.limits = episode_limits(self.env, settings.max_turns, settings.max_episode_tokens,
                                     settings.context_tokens, settings.max_new_tokens)
        self.renderer = ObservationRenderer(tokenizer, settings.chat_template)

    def _stream(self, seed: int):
        """The task's training-prompt stream of ``seed``, only this generator's shard of it."""
        stream = self.task.train_prompts(seed)
        return stream if self._keep is None else filter(self._keep, stream)

    def stream_state(self) -> tuple[int, int]:
        """(prompt-stream seed, prompts drawn): where the training-prompt stream stands."""
        return self._prompt_seed, self._prompts_drawn

    def restore_stream(self, seed: int, drawn: int) -> None:
        """Continue the stream of ``seed`` after its first ``drawn`` prompts (a resumed run), by
        replaying it: the task's streams are cheap, seeded iterators."""
        self._prompt_seed, self._prompts_drawn = seed, drawn
        self._prompts = self._stream(seed)
        for _ in range(drawn):
            next(self._prompts)

    def generate(self, num_prompts: int, between_steps=None) -> tuple[list[Group], GenStats]:
        """``num_prompts`` prompts -> their groups of K scored episodes (one turn each for a task).
        ``between_steps``: with ``inflight_updates``, what the engine calls between decoding
        steps (the worker's check for new weights); ignored otherwise."""
        prompts: list[Prompt] = [next(self._prompts) for _ in range(num_prompts)]
        self._prompts_drawn += num_prompts
        prompt_ids = encode_prompts(self.tokenizer, [p.model_input for p in prompts], self.chat_template)
        version = self.engine.version
        t0 = time.perf_counter()
        inflight = between_steps if self.settings.inflight_updates else None
        episodes = run_episodes(self.engine, self.env, self.tokenizer, prompts, prompt_ids, self.k, limits=self.limits,
                                renderer=self.renderer, reward_errors=self.reward_errors, between_steps=inflight)  # [B*K]
        t1 = time.perf_counter()  # sampling and (multi-turn) the environment's steps; single-turn: sampling and reward
        rewards = [None if e.error is not None else e.reward for e in episodes]  # [B*K]
        if self.length_penalty or self.missing_eos_penalty:
            rewards = [None if r is None else shaped_reward(r, completion_tokens(e.ids, e.finished) - (len(e.mask) - sum(e.mask)),
                                                            e.finished, self.length_penalty, self.missing_eos_penalty)
                       for r, e in zip(rewards, episodes)]
        tokens = sum(sum(e.mask) for e in episodes)  # the policy's tokens
        errors = {i: e.error for i, e in enumerate(episodes) if e.error is not None}
        # A group with any failed episode is dropped whole: the losses need exactly K samples per group.
        keep = [b for b in range(len(prompts)) if all(rewards[b * self.k + j] is not None for j in range(self.k))]
        self._failed_requests = 0 if keep else self._failed_requests + 1
        if errors:
            self._note_errors(errors)
        kept = [episodes[b * self.k + j] for b in keep for j in range(self.k)]
        refs = iter(self._ref_logprobs(kept))  # [B'*K]
        t2 = time.perf_counter()
        groups = []
        for b in keep:
            samples = []
            for j in range(self.k):
                i = b * self.k + j
                e = episodes[i]
                versions = e.versions if any(v != version for v in e.versions) else None
                # in-flight updates: the sample's version is its oldest token's
                samples.append(Sample(prompts[b].prompt_id, prompt_ids[b], e.ids, e.logprobs, rewards[i],
                                      min(versions) if versions else version, e.finished,
                                      e.texts[0] if e.turns == 1 else self.tokenizer.decode(e.ids, skip_special_tokens=True),
                                      next(refs), versions, e.loss_mask))
            groups.append(Group(prompts[b], samples))
        parts = {name for e in kept for name in e.components}
        sums = component_sums({k: [e.components.get(k) for e in kept] for k in parts})
        turns = sum(e.turns for e in episodes)
        return groups, GenStats(t1 - t0, t2 - t1, tokens, version, len(errors), sums, len(episodes), turns,
                                sum(e.truncated for e in episodes))

    def _note_errors(self, errors: dict[int, str]) -> None:
        first = errors[min(errors)]
        if not self._warned:  # once per generator: enough to find the bug, not enough to flood the log
            log.warning("skipping groups with reward errors (counted in reward_errors_total); first: %s", first)
            self._warned = True
        if self._failed_requests >= MAX_FAILED_REQUESTS:
            raise RewardError(f"every group had a reward error in {MAX_FAILED_REQUESTS} requests in a row "
                              f"(reward_errors=skip), so nothing is left to train on; last: {first}")

    @torch.no_grad()
    def _ref_logprobs(self, episodes: list[Episode]) -> list:
        """[N] the frozen reference's log-probs of each episode's tokens (environment tokens
        included; the loss mask leaves them out), or None each without a reference here."""
        if self.ref_model is None or not episodes:
            return [None] * len(episodes)
        rows_c = [e.ids for e in episodes]
        device = next(self.ref_model.parameters()).device
        batch = pack([e.prompt_ids for e in episodes], rows_c, self.tokenizer.pad_token_id).to(device)
        logp = completion_logprobs(self.ref_model, batch, self.temperature).float().cpu()  # [N, C]
        return [logp[i, : len(c)].tolist() for i, c in enumerate(rows_c)]
