"""The environment interface: multi-turn episodes.

An episode starts from a :class:`~asyncrl.types.Prompt`. The policy writes a turn (text); the
environment answers with a :class:`Step`: an observation (a tool result, a game move, a user
message), this turn's reward, and whether the episode is over. The generator
(:mod:`asyncrl.rollout`) keeps the episode as one token sequence after the prompt (policy turns
and observations, rendered with the chat template's roles) with a mask: only the policy's tokens
are trained on and carry behaviour log-probs. An episode's reward is the sum of its turns'.

Limits (the generator applies them; :class:`Environment` only states ``max_turns``): an episode
that has taken ``max_turns`` policy turns without the environment ending it, or whose tokens after
the prompt reach ``max_episode_tokens``, ends there, cut at the limit, as *truncated*
(``Sample.finished`` False, like a completion cut at ``max_new_tokens``); its reward is what its
turns earned.

Write an environment by subclassing :class:`Environment` (or any object with the same methods):
``train_prompts`` / ``eval_prompts`` like a task's, ``reset(prompt) -> state`` once per episode
(the K episodes of a prompt get K states), ``step(state, turn) -> Step`` per policy turn. States
stay in the generator's process; environments are built there (``--env module:factory``) or sent
there with cloudpickle (the Python API's ``env=``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from asyncrl.errors import RewardError
from asyncrl.types import Prompt

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Step:
    """An environment's answer to one policy turn."""

    observation: str | list[dict] | None = None  # text (one message of the env's observation_role) or chat messages
    reward: float = 0.0  # this turn's reward; the episode's reward is the sum over its turns
    done: bool = False  # the environment ended the episode (no observation is shown then)


class EnvError(RewardError):
    """An environment raised or answered with a malformed step (one line). A :class:`RewardError`:
    ``--reward-errors`` decides for it as for a reward function's error (``stop`` ends the run,
    ``skip`` drops the episode's group and counts it)."""


class Environment:
    """Base class of multi-turn environments (see the module docstring)."""

    name: str = "env"
    max_turns: int = 1  # policy turns an episode may take (``--max-turns`` overrides)
    observation_role: str = "user"  # the chat role of a text observation (tool environments: "tool")

    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        """An endless stream of episode start prompts; different seeds give different orders."""
        raise NotImplementedError

    def eval_prompts(self) -> list[Prompt]:
        """A fixed evaluation set (same every call)."""
        raise NotImplementedError

    def reset(self, prompt: Prompt) -> Any:
        """A new episode of ``prompt``: its state (anything; passed back to :meth:`step`)."""
        return None

    def step(self, state: Any, turn: str) -> Step:
        """The policy wrote ``turn`` (decoded, special tokens dropped): the environment's answer."""
        raise NotImplementedError

    def evaluate(self, episodes: list[dict]) -> dict[str, float]:
        """Metrics of greedy evaluation episodes (each row: ``reward``, ``turns``, ``truncated``,
        ...): ``reward_mean``, ``turns_mean``, ``truncated_share`` and ``accuracy`` = share of
        episodes with reward > 0. Override for a task-specific notion of correct."""
        n = max(1, len(episodes))
        ok = [e for e in episodes if e.get("error") is None]
        return {"reward_mean": sum(e["reward"] for e in ok) / max(1, len(ok)),
                "accuracy": sum(e["reward"] > 0 for e in ok) / n,
                "turns_mean": sum(e["turns"] for e in episodes) / n,
                "truncated_share": sum(bool(e["truncated"]) for e in episodes) / n}


def is_environment(obj) -> bool:
    """Whether ``obj`` is a multi-turn environment (has ``reset`` and ``step``) rather than a task."""
    return callable(getattr(obj, "step", None)) and callable(getattr(obj, "reset", None))


def checked_step(step: Any, where: str) -> Step:
    """``step`` as a valid :class:`Step`, else :class:`EnvError` saying what is wrong
    (one line). Also accepts a ``(observation, reward, done)`` tuple."""
    if isinstance(step, tuple) and len(step) == 3:
        step = Step(*step)
    if not isinstance(step, Step):
        raise EnvError(f"{where} returned {type(step).__name__}, expected a Step(observation, reward, done)")
    if not isinstance(step.done, bool):
        raise EnvError(f"{where} returned done={step.done!r}, expected True or False")
    r = step.reward
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(float(r)):
        raise EnvError(f"{where} returned reward={r!r}, expected a finite number")
    obs = step.observation
    if obs is None:
        if not step.done:
            raise EnvError(f"{where} returned no observation for an episode that is not done")
    elif isinstance(obs, list):
        for m in obs:
            if (not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)):
                raise EnvError(f"{where} returned a malformed observation message {str(m)[:80]!r}: expected "
                                        f"{{'role': one of {', '.join(ROLES)}, 'content': str}}")
    elif not isinstance(obs, str):
        raise EnvError(f"{where} returned an observation of type {type(obs).__name__}, expected text or a "
                                "list of chat messages")
    return Step(obs, float(r), step.done)
