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
    versions: list[int] | None = None  # [C] weights version that sampled each id; None = all the engine's at the start


class Engine(Protocol):
    version: int  # learner version of the loaded weights

    def generate(self, prompts: list[list[int]], k: int, greedy: bool = False) -> list[list[Completion]]:
        """prompts: B token-id lists -> [B][K] completions."""
        ...

    def load_weights(self, state: dict[str, Tensor], version: int) -> None:
        """Copy ``state`` (a policy state_dict) into the live model; no rebuild."""
        ...

    def close(self) -> None:
        """Release what the engine holds beyond Python objects (vLLM's engine core, temp files)."""
        ...


def eos_token_ids(generation_config, tokenizer) -> list[int]:
    """The ids that end a completion: the model's generation config's ``eos_token_id`` (one or a
    list, e.g. chat models that also stop at ``<|im_end|>``), else the tokenizer's. Every engine
    stops at exactly these, so ``finished`` means the same thing whichever engine sampled."""
    ids = generation_config.eos_token_id if generation_config is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        raise ValueError("the model/tokenizer defines no EOS token; generation could not stop")
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]
