"""Data that crosses role boundaries: what generators produce and the learner consumes.

Data path: prompts -> Generator (engine samples K completions, task scores them) -> ``Group`` of
``Sample``s -> replay buffer -> learner batch (list of groups) -> loss -> optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Prompt:
    """One task prompt. ``meta`` carries whatever the reward needs (e.g. the reference answer)."""

    prompt_id: str
    text: str
    meta: dict = field(default_factory=dict)


@dataclass
class Sample:
    """One scored completion.

    Token lists are plain Python lists so samples pickle cheaply across processes.
    """

    prompt_id: str
    prompt_ids: list[int]  # [P] prompt token ids (no padding)
    completion_ids: list[int]  # [C] generated ids, including the EOS token if one was produced
    behaviour_logprobs: list[float]  # [C] temperature-scaled log-probs under the generating policy
    reward: float
    version: int  # learner version of the weights that generated this sample
    finished: bool  # True when generation stopped at EOS (not at max tokens)
    text: str = ""  # decoded completion, for logs
    ref_logprobs: list[float] | None = None  # [C] frozen reference log-probs, when the generator computed them


@dataclass
class Group:
    """K samples of one prompt generated together by one policy version."""

    prompt: Prompt
    samples: list[Sample]  # [K]

    @property
    def version(self) -> int:
        return min(s.version for s in self.samples)


@dataclass(frozen=True)
class GenStats:
    """What one generation request cost."""

    gen_time_s: float  # engine (sampling) time
    score_time_s: float  # decoding, task reward and reference log-probs
    tokens: int  # generated tokens (EOS included)
    version: int  # learner version of the weights that generated the request
    reward_errors: int = 0  # completions whose reward failed (reward_errors=skip; their groups are dropped)
