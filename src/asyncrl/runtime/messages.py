"""Typed messages between the controller and its generator workers, whatever hosts them.

Into a worker (its own inbox or actor calls, handled strictly in order):
  ``WeightsUpdate``   load the weights a publisher announced (see ``transport.py``)
  ``GenerateRequest`` sample ``num_prompts`` prompts x K and reply with ``RequestDone``
  ``StopWorker``      exit
Out of a worker (the host hands them to the controller through ``Host.next_message``):
  ``WorkerReady``     built and waiting for weights and requests
  ``RequestDone``     the groups of one request
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


ToWorker = Union[GenerateRequest, WeightsUpdate, StopWorker]
FromWorker = Union[WorkerReady, RequestDone, WorkerError, WorkerLost]
