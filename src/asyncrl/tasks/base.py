"""The task interface: a prompt source, a reward, and an evaluation metric."""

from __future__ import annotations

from typing import Iterator, Protocol

from asyncrl.types import Prompt


class Task(Protocol):
    name: str

    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        """An endless stream of training prompts; different seeds give different orders."""
        ...

    def eval_prompts(self) -> list[Prompt]:
        """A fixed evaluation set (same every call)."""
        ...

    def reward(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        """One float per (prompt, completion) pair; ``len(prompts) == len(completions)``."""
        ...
