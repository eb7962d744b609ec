"""Typed messages between the controller and its generator workers, whatever hosts them.

Into a worker (its own inbox or actor calls, handled strictly in order):
  ``WeightsUpdate``   load the weights a publisher announced (see ``transport.py``)
  ``RestoreGenerator`` continue a checkpointed generator's prompt stream (and random state)
  ``GenerateRequest`` sample ``num_prompts`` prompts x K and reply with ``RequestDone``
  ``StopWorker``      exit
Out of a worker (the host hands them to the controller through ``Host.next_message``):
  ``WorkerReady``     built and waiting for weights and requests
  ``RequestDone``     the groups of one request, and the generator's state right after it
  ``WorkerError``     an exception inside the worker; ``user_error`` marks errors that are the
                      user's to fix (a reward function raising under ``reward_errors: stop``),
                      which stop the run with their one-line message instead of a restart
  ``WorkerLost``      the host saw the worker die (process exited, actor killed, out of memory)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from asyncrl.types import GenStats, Group


@dataclass(frozen=True)
class GenerateRequest:
    request_id: int
    num_prompts: int
    attempt: int = 0  # 0 for the first dispatch, +1 for each re-dispatch after its worker was lost


@dataclass(frozen=True)
class WeightsUpdate:
    version: int  # learner version of these weights
    payload: Any  # what the transport's receiver turns back into a state dict (transport.py)


@dataclass
class GeneratorState:
    """Where a generator's streams stand: enough to continue them exactly after a resume."""

    prompt_seed: int  # seed of the task's training-prompt stream
    prompts_drawn: int  # prompts taken from that stream so far
    rng: Any = None  # the state of the generator's own torch.Generator (uint8 tensor; on the
    # generator's device), which its hf engine samples from; None = keep the freshly seeded one
    # Checkpoints written before generators had their own torch.Generator: a process worker's
    # process RNG (which only its sampling drew from), read on restore; never written now.
    torch_rng: Any = None  # the process's torch CPU RNG state
    cuda_rng: Any = None  # list of per-device CUDA RNG states

    def to_dict(self) -> dict:
        return {"prompt_seed": self.prompt_seed, "prompts_drawn": self.prompts_drawn, "rng": self.rng}


@dataclass(frozen=True)
class RestoreGenerator:
    """Continue from ``state`` (sent once, before any weights or request, to a resumed worker)."""

    state: GeneratorState


@dataclass(frozen=True)
class StopWorker:
    """Finish the current request's reply (if any) and exit."""


@dataclass(frozen=True)
class WorkerReady:
    worker_id: int


@dataclass
class RequestDone:
    worker_id: int
    request_id: int
    groups: list[Group]
    stats: GenStats
    weight_load_s: float = 0.0  # time spent loading weights since the previous reply
    generator_state: GeneratorState | None = None  # the generator's state after this request
    samples: int = field(init=False)

    def __post_init__(self) -> None:
        self.samples = sum(len(g.samples) for g in self.groups)


@dataclass(frozen=True)
class WorkerError:
    worker_id: int
    message: str  # one line when user_error, else a traceback
    user_error: bool = False


@dataclass(frozen=True)
class WorkerLost:
    worker_id: int
    reason: str


ToWorker = Union[GenerateRequest, WeightsUpdate, RestoreGenerator, StopWorker]
FromWorker = Union[WorkerReady, RequestDone, WorkerError, WorkerLost]
