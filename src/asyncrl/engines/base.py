"""The generation-engine interface: sample K completions per prompt; take new weights in place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


@dataclass
class Completion:
    ids: list[int]  # [C] generated ids, ending with EOS when finished
    logprobs: list[float]  # [C] temperature-scaled behaviour log-probs of those ids
    finished: bool  # stopped at EOS rather than at max_new_tokens


class Engine(Protocol):
    version: int  # learner version of the loaded weights

    def generate(self, prompts: list[list[int]], k: int, greedy: bool = False) -> list[list[Completion]]:
        """prompts: B token-id lists -> [B][K] completions."""
        ...

    def load_weights(self, state: dict[str, Tensor], version: int) -> None:
        """Copy ``state`` (a policy state_dict) into the live model; no rebuild."""
        ...
