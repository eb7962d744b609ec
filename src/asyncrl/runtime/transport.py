"""Weight transport: how a learner's published weights reach the generators' engines.

A ``WeightPublisher`` lives with the learner. ``publish(state, version)`` takes a snapshot (see
:func:`snapshot`) and returns one ``WeightsUpdate`` that the controller sends to every worker
(and to a restarted worker later); a ``WeightReceiver`` in the worker turns that update back into
a state dict for ``Engine.load_weights``. Engines never see how the bytes travelled:

==============  ===============================================  ==========================
transport       payload in the ``WeightsUpdate``                 hosts
==============  ===============================================  ==========================
``inprocess``   the snapshot itself (same address space)         inline, thread
``queue``       the snapshot, moved once into shared memory by   process
                ``torch.multiprocessing`` when first pickled
``object_store`` a Ray ``ObjectRef``: one ``ray.put`` per        ray
                publish, read by every generator
``broadcast``   a tensor manifest; the tensors go through a      process, ray (``broadcast.py``)
                ``torch.distributed`` broadcast (NCCL on GPU,
                gloo on CPU)
==============  ===============================================  ==========================

The transports' halves are picked by name in ``transports.py`` (``make_publisher`` /
``make_receiver``); this module holds what they share, so none of them imports another.

Publishing never blocks the learner beyond taking the snapshot: queue pickling happens in the
queue's feeder thread, ``ray.put`` is one local copy, the broadcast runs in a background thread.
"""

from __future__ import annotations

import abc
from typing import Any

from torch import Tensor

from asyncrl.runtime.messages import WeightsUpdate
from asyncrl.weights import distinct_bytes, snapshot  # noqa: F401 - re-exported

TRANSPORTS = ("inprocess", "queue", "object_store", "broadcast")


class WeightPublisher(abc.ABC):
    """The learner-side half of a transport, owned by one host: the host makes it, asks it for
    each worker's :meth:`receiver_spec`, tells it when a worker is gone (:meth:`remove_worker`)
    and closes it once, in ``host.close()``; ``close`` is idempotent all the same."""

    name: str

    @abc.abstractmethod
    def publish(self, state: dict[str, Tensor], version: int) -> WeightsUpdate:
        """Make ``state`` (a :func:`snapshot`) available to receivers; returns what to send them."""

    def receiver_spec(self, worker_id: int) -> Any | None:
        """What worker ``worker_id``'s receiver needs to connect (``make_receiver``'s ``spec``);
        registers the worker where the transport tracks them. None: nothing to connect to."""
        return None

    def add_worker(self, worker_id: int) -> None:
        """Expect ``worker_id`` among the receivers (transports that track their receivers)."""

    def remove_worker(self, worker_id: int) -> None:
        """Stop expecting ``worker_id`` (lost, stopped or retired) for good. Idempotent."""

    def close(self) -> None:
        """Release what the publisher holds (threads, stores, the latest weights). Idempotent."""


class WeightReceiver(abc.ABC):
    """The worker-side half of a transport, owned by the worker's service (closed with it)."""

    @abc.abstractmethod
    def receive(self, update: WeightsUpdate) -> dict[str, Tensor]:
        """The state dict announced by ``update`` (blocks until it has arrived)."""

    def close(self) -> None:
        """Release what the receiver holds (threads, connections). Idempotent."""


class DirectPublisher(WeightPublisher):
    """``inprocess`` and ``queue``: the snapshot travels inside the message itself. Each publish
    is a fresh snapshot, so a worker still reading the previous one is never disturbed."""

    def __init__(self, name: str = "inprocess"):
        if name not in ("inprocess", "queue"):
            raise ValueError(f"DirectPublisher carries the inprocess or queue transport, not {name!r}")
        self.name = name

    def publish(self, state: dict[str, Tensor], version: int) -> WeightsUpdate:
        return WeightsUpdate(version, state)


class DirectReceiver(WeightReceiver):
    def receive(self, update: WeightsUpdate) -> dict[str, Tensor]:
        return update.payload
