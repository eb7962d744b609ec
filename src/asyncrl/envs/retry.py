"""Built-in environment ``arithmetic_retry``: the ``arithmetic`` task's problems, several tries.

The policy answers ``"37+58="``; a right answer ends the episode with reward ``1 / turn`` (1.0 at
the first try, 0.5 at the second, ...); a wrong one is answered with the problem again (the
observation is the prompt text itself, so the shipped tiny model, whose vocabulary is digits,
``+``, ``-`` and ``=``, reads it too) until ``max_turns`` (default 4) tries are spent, reward 0.
Episode lengths follow the model's skill: a long tail of wrong tries early in training, one
turn once it has learnt, the setting where asynchrony pays (docs/envs.md).
"""

from __future__ import annotations

import time
from typing import Iterator

from asyncrl.envs.base import Environment, Step
from asyncrl.tasks.arithmetic import ArithmeticTask, parse_answer
from asyncrl.types import Prompt


class ArithmeticRetryEnvironment(Environment):
    name = "arithmetic_retry"
    observation_role = "user"

    def __init__(self, max_turns: int = 4, eval_size: int = 200, latency_s: float = 0.0):
        """``latency_s``: seconds each step waits before answering, to stand for a slow environment
        (a tool, a sandbox, a game engine) in benchmarks; 0 = none."""
        if max_turns < 1:
            raise ValueError(f"arithmetic_retry: max_turns must be at least 1, got {max_turns}")
        if latency_s < 0:
            raise ValueError(f"arithmetic_retry: latency_s must be at least 0, got {latency_s}")
        self.max_turns = max_turns
        self.latency_s = latency_s
        self._task = ArithmeticTask(eval_size)

    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        return self._task.train_prompts(seed)

    def eval_prompts(self) -> list[Prompt]:
        return self._task.eval_prompts()

    def reset(self, prompt: Prompt) -> dict:
        return {"prompt": prompt, "tries": 0}

    def step(self, state: dict, turn: str) -> Step:
        if self.latency_s:
            time.sleep(self.latency_s)
        state["tries"] += 1
        if parse_answer(turn) == state["prompt"].meta["answer"]:
            return Step(reward=1.0 / state["tries"], done=True)
        return Step(observation=state["prompt"].text, reward=0.0, done=False)
