"""Episodes: the one path from prompts to scored token sequences, single-turn or multi-turn.

A single-turn task is the one-turn case: :class:`TaskEnvironment` wraps it (its reward is the
episode's only step, scored in one batched call as before), so a task and a multi-turn
environment (:mod:`asyncrl.envs`) run through the same :func:`run_episodes`.

Per turn, every live episode's context (prompt + everything after it so far) goes to the engine
in one call: the first turn samples K completions per prompt (one call, exactly what a
single-turn task always did); later turns one per episode. The policy's tokens get mask 1 and
their behaviour log-probs; the environment's observation, rendered with the chat template's
roles (:class:`ObservationRenderer`), gets mask 0 and log-prob 0.0 (context, never trained on).

Limits (also in docs/envs.md): an episode ends when the environment says ``done``; or, as
*truncated*, after ``max_turns`` policy turns, or when its tokens after the prompt pass
``max_episode_tokens`` (cut there; the environment is not asked about a turn the cut went
through, and an observation that leaves no room for a policy token ends it too), or when the
next turn would not fit the model's context (prompt + episode + observation + ``max_new_tokens``
past ``max_position_embeddings``; the observation is then not added). A truncated
episode is not ``finished`` (like a completion cut at ``max_new_tokens``: ``missing_eos_penalty``
and ``mask_truncated_completions`` apply to it); its reward is what its turns earned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asyncrl.engines.base import Engine
from asyncrl.envs.base import EnvError, Step, checked_step
from asyncrl.errors import clip, one_line
from asyncrl.tasks.base import Task, checked_rewards
from asyncrl.types import Prompt

MARK = "\u2063asyncrl-turn\u2063"  # a content no real turn contains, to find a turn's end in the rendering


@dataclass
class Episode:
    """One rollout of one prompt: the tokens after the prompt, policy turns and observations."""

    prompt: Prompt
    prompt_ids: list[int]  # [P]
    state: Any = None  # the environment's (reset's) state
    ids: list[int] = field(default_factory=list)  # [C] policy and environment tokens
    logprobs: list[float] = field(default_factory=list)  # [C] behaviour log-probs; 0.0 at environment tokens
    mask: list[int] = field(default_factory=list)  # [C] 1 = a policy token (trained on), 0 = environment's
    versions: list[int] = field(default_factory=list)  # [C] weights version of each token (environment: the turn's)
    reward: float = 0.0  # sum of the turns' rewards
    turns: int = 0  # policy turns taken
    done: bool = False
    truncated: bool = False  # ended by max_turns / max_episode_tokens, not by the environment
    last_turn_finished: bool = False  # the last policy turn ended at EOS
    error: str | None = None  # the environment's (or reward's) one-line error; the group is dropped
    components: dict[str, float | None] = field(default_factory=dict)  # custom task: per reward function
    texts: list[str] = field(default_factory=list)  # the policy's turns, decoded
    pending: list[dict] | None = None  # the observation to show before the next turn

    @property
    def finished(self) -> bool:
        """Ended by the environment, its last turn at EOS (single-turn: the completion's EOS)."""
        return self.done and not self.truncated and self.last_turn_finished

    @property
    def loss_mask(self) -> list[int] | None:
        """[C] the mask, or None when every token is the policy's (single-turn)."""
        return None if all(self.mask) else self.mask


class TaskEnvironment:
    """A single-turn task as a one-turn environment: the completion is scored by the task's reward
    (batched, :func:`asyncrl.tasks.base.checked_rewards`: ``reward_errors`` and the custom task's
    per-function values as always) and the episode ends."""

    max_turns = 1
    observation_role = "user"

    def __init__(self, task: Task):
        self.task = task
        self.name = task.name

    def reset(self, prompt: Prompt):
        return None

    def score(self, episodes: list[Episode], turn_ids: list[list[int]], policy: str, version: int) -> None:
        components: dict[str, list] = {}
        rewards, errors = checked_rewards(self.task, [e.prompt for e in episodes], [e.texts[-1] for e in episodes],
                                          policy, completion_ids=turn_ids, step=version, components=components)
        for i, e in enumerate(episodes):
            e.done = True
            if rewards[i] is None:
                e.error = errors[i]
            else:
                e.reward += rewards[i]
            e.components = {k: v[i] for k, v in components.items()}


class ObservationRenderer:
    """Observation messages -> the tokens that follow a policy turn in the chat template.

    With a chat template: the template's text between the end of the policy's turn and the start
    of the next one (end-of-turn marker, the observation messages in their roles, the generation
    prompt), found by rendering a conversation with and without them; the policy's EOS, when its
    turn ended with one, is not repeated. Without one (``chat_template never`` or a tokenizer
    without a template): the messages' contents, one per line."""

    def __init__(self, tokenizer, chat_template: str):
        self.tokenizer = tokenizer
        self.chat = chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
        eos = tokenizer.eos_token
        self.eos_text = eos if isinstance(eos, str) else ""

    def __call__(self, messages: list[dict], turn_ended_with_eos: bool) -> list[int]:
        return self.tokenizer(self.text(messages, turn_ended_with_eos), add_special_tokens=False)["input_ids"]

    def text(self, messages: list[dict], turn_ended_with_eos: bool) -> str:
        """The observation's text, from the end of the policy's turn to the start of its next one."""
        if not self.chat:
            return "\n".join(m["content"] for m in messages)
        base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": MARK}]
        before = self.tokenizer.apply_chat_template(base, tokenize=False)
        after = self.tokenizer.apply_chat_template(base + messages, add_generation_prompt=True, tokenize=False)
        if not after.startswith(before) or MARK not in before:
            raise EnvError("the chat template renders a turn differently once an observation follows it, so an "
                           "episode cannot be kept as one token sequence; use chat_template never or another model")
        text = before[before.index(MARK) + len(MARK):] + after[len(before):]
        if turn_ended_with_eos and self.eos_text and text.startswith(self.eos_text):
            text = text[len(self.eos_text):]
        return text


def _as_messages(obs: str | list[dict], role: str) -> list[dict]:
    return [{"role": role, "content": obs}] if isinstance(obs, str) else obs


@dataclass(frozen=True)
class Limits:
    max_turns: int  # policy turns per episode
    max_episode_tokens: int  # tokens after the prompt (policy and environment)
    # the model's context and the most tokens a turn may take: a turn starts only when prompt +
    # episode + max_new_tokens fit (None = not checked)
    context_tokens: int | None = None
    max_new_tokens: int = 0

    def room_for_a_turn(self, e: "Episode", extra: int) -> bool:
        """Whether ``e`` with ``extra`` more tokens leaves room for a whole turn in the context."""
        return (self.context_tokens is None
                or len(e.prompt_ids) + len(e.ids) + extra + self.max_new_tokens <= self.context_tokens)


def episode_limits(env, max_turns: int | None, max_episode_tokens: int | None, context_tokens: int | None = None,
                   max_new_tokens: int = 0) -> Limits:
    """The limits of ``env``'s episodes: ``max_turns`` (None = the environment's own
    ``max_turns``, 1 for a task), ``max_episode_tokens`` (None = no limit), the model's
    ``context_tokens`` (None = unknown) and ``max_new_tokens`` per turn."""
    turns = max_turns if max_turns is not None else int(getattr(env, "max_turns", 1) or 1)
    return Limits(turns, max_episode_tokens if max_episode_tokens is not None else 2**62, context_tokens,
                  max_new_tokens)


def run_episodes(engine: Engine, env, tokenizer, prompts: list[Prompt], prompt_ids: list[list[int]], k: int, *,
                 limits: Limits, renderer: ObservationRenderer, reward_errors: str = "stop", greedy: bool = False,
                 between_steps=None) -> list[Episode]:
    """K episodes per prompt, prompt-major ([B*K]), until every one has ended.

    ``between_steps``: in-flight updates (passed to every engine call); ``greedy``: evaluation."""
    version = engine.version
    episodes = [Episode(p, ids) for p, ids in zip(prompts, prompt_ids) for _ in range(k)]
    for e in episodes:
        try:
            e.state = env.reset(e.prompt)
        except Exception as exc:  # noqa: BLE001 - user code may raise anything
            _fail(e, f"reset raised {one_line(exc, limit=200, typed=True)}", reward_errors, env)
    kw = {"between_steps": between_steps} if between_steps is not None else {}
    if greedy:
        kw["greedy"] = True
    first = True
    while live := [e for e in episodes if not e.done]:
        version = engine.version  # the weights of this turn (in-flight updates may load new ones between turns)
        if first:  # one call, K samples per prompt: exactly a single-turn task's request
            out = [c for g in engine.generate(prompt_ids, k, **kw) for c in g]  # [B*K]
            completions = [c for c, e in zip(out, episodes) if not e.done]
        else:
            completions = [g[0] for g in engine.generate([e.prompt_ids + e.ids for e in live], 1, **kw)]
        first = False
        turn_ids = []
        for e, c in zip(live, completions):
            e.ids += c.ids
            e.logprobs += c.logprobs
            e.mask += [1] * len(c.ids)
            e.versions += c.versions if c.versions else [version] * len(c.ids)
            e.turns += 1
            e.last_turn_finished = c.finished
            e.texts.append(tokenizer.decode(c.ids, skip_special_tokens=True))
            turn_ids.append(c.ids)
        asked = [(e, ids) for e, ids in zip(live, turn_ids) if not _cut(e, limits.max_episode_tokens)]
        _step(env, [e for e, _ in asked], [ids for _, ids in asked], reward_errors, version)
        for e in (e for e, _ in asked if not e.done):
            if e.turns >= limits.max_turns:
                e.done = e.truncated = True
        for e in (e for e, _ in asked if not e.done):
            _observe(e, renderer, limits)
    return episodes


def _cut(e: Episode, limit: int) -> bool:
    """Cut ``e`` at ``limit`` tokens when it passed it (it ends truncated); whether it did."""
    if len(e.ids) <= limit:
        return False
    del e.ids[limit:], e.logprobs[limit:], e.mask[limit:], e.versions[limit:]
    e.done = e.truncated = True
    return True


def _observe(e: Episode, renderer: ObservationRenderer, limits: Limits) -> None:
    """Append the pending observation's tokens (context: mask 0); an episode whose next turn would
    not fit the model's context ends here instead, truncated, without the observation."""
    ids = renderer(e.pending, e.last_turn_finished)
    e.pending = None
    if not limits.room_for_a_turn(e, len(ids)):
        e.done = e.truncated = True
        return
    limit = limits.max_episode_tokens
    e.ids += ids
    e.logprobs += [0.0] * len(ids)
    e.mask += [0] * len(ids)
    e.versions += [e.versions[-1] if e.versions else 0] * len(ids)
    if len(e.ids) >= limit:  # no room left for a policy token
        _cut(e, limit)
        e.done = e.truncated = True


def _step(env, episodes: list[Episode], turn_ids: list[list[int]], policy: str, version: int) -> None:
    """The environment's answer to each episode's latest turn: reward added, done or the
    observation kept for :func:`_observe`; a failure marks the episode (or, under ``stop``, raises)."""
    if not episodes:
        return
    if isinstance(env, TaskEnvironment):
        env.score(episodes, turn_ids, policy, version)
        return
    name = getattr(env, "name", type(env).__name__)
    role = getattr(env, "observation_role", "user")
    for e in episodes:
        where = f"environment {name!r} on prompt id {e.prompt.prompt_id!r} (turn {e.turns}: {clip(e.texts[-1], 60)!r})"
        try:
            step: Step = checked_step(env.step(e.state, e.texts[-1]), f"{where}: step")
        except EnvError as exc:
            _fail(e, str(exc), policy, env)
            continue
        except Exception as exc:  # noqa: BLE001 - user code may raise anything
            _fail(e, f"{where}: step raised {one_line(exc, limit=200, typed=True)}", policy, env)
            continue
        e.reward += step.reward
        if step.done:
            e.done = True
        else:
            e.pending = _as_messages(step.observation, role)


def _fail(e: Episode, msg: str, policy: str, env) -> None:
    msg = msg if msg.startswith("environment") else f"environment {getattr(env, 'name', '?')!r}: {msg}"
    if policy == "stop":
        raise EnvError(f"environment error: {msg}; pass --reward-errors skip to drop and count such groups instead")
    e.error, e.done = f"environment error: {msg}", True
