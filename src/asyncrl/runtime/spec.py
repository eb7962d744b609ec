"""What a generator worker is built from: one :class:`WorkerSpec`, whatever hosts the worker.

Every host makes one spec per worker start (``hosts.py``: inline, thread, process;
``ray_host.py``: Ray actors) and the worker builds itself from it with
:func:`asyncrl.runtime.worker.build_generator`. A spec is plain data, so it travels as it is to a
thread, pickled to a spawned process (``worker_entry.py``), or as an actor-call argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class WorkerSpec:
    config: dict  # Config.model_dump() (Ray: paths made absolute); Config(**config) rebuilds it
    model_path: str  # the policy weights to start from (the base model, or the resumed checkpoint)
    ref_path: str | None  # the reference model (the run's initial policy); None = model_path
    worker_id: int  # never reused: a restarted generator gets a fresh id
    start_version: int = 0  # learner version of model_path; offsets the seeds of a resumed run
    transport: str = "inprocess"  # the publisher's name (transport.TRANSPORTS)
    receiver_spec: Any = None  # what the publisher's receiver_spec(worker_id) returned (broadcast)
    threads: int | None = None  # torch threads of a worker with its own process; None = leave as is
    inputs: Any = None  # asyncrl.train's TaskInputs (same process) or their cloudpickled bytes
    reward_actor: Any = None  # Ray: handle of the shared reward actor (RemoteRewardTask); else None
    shard: tuple[int, int] | None = None  # (slot, num_generators) with prompt_sharding; None = every prompt

    @classmethod
    def of(cls, cfg, model_path: str, worker_id: int = 0, **kw) -> "WorkerSpec":
        """A spec for ``cfg`` (a ``Config``): tests, benchmarks and one-off generators."""
        return cls(cfg.model_dump(), model_path, kw.pop("ref_path", None), worker_id, **kw)

    def with_id(self, worker_id: int, **kw) -> "WorkerSpec":
        return replace(self, worker_id=worker_id, **kw)


__all__ = ["WorkerSpec"]
