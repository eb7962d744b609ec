"""The ``object_store`` weight transport (Ray): one ``ray.put`` per publish, read by every generator.

Ray is imported lazily (it is an optional package): importing this module never needs it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from asyncrl.runtime.messages import WeightsUpdate
from asyncrl.runtime.transport import WeightPublisher, WeightReceiver, distinct_bytes


def ray_module():
    """``import ray``, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("runtime=ray needs Ray: pip install 'asyncrl[ray]'") from None
    return ray


@dataclass(frozen=True)
class ObjectRefBox:
    """A weights ``ObjectRef`` inside a ``WeightsUpdate``. Ray resolves an ``ObjectRef`` passed
    directly as an actor-call argument in the caller's scheduling path; wrapped, it reaches the
    generator as a ref, and the generator's receiver reads it when it handles the message, in
    order with its other calls. On the learner side, until the ``ray.put`` is done, ``ref`` is the
    ``Future`` of that put (the host holds such an update back, see ``RayHost._flush``)."""

    ref: Any
    nbytes: int  # distinct bytes of the state dict (tied tensors once)

    @property
    def ready(self) -> bool:
        return not isinstance(self.ref, Future) or self.ref.done()

    def resolved(self) -> "ObjectRefBox":
        """The box with the put's ``ObjectRef`` (waits for the put; raises what it raised)."""
        return ObjectRefBox(self.ref.result(), self.nbytes) if isinstance(self.ref, Future) else self


class ObjectStorePublisher(WeightPublisher):
    """``object_store``: one ``ray.put`` per publish; every generator ``ray.get``s that object
    (Ray moves it to each node once and generators on a node read their node's copy).

    The put copies the snapshot into the object store (0.7-0.8 s at 135M parameters on a 2-core
    CPU, docs/benchmarks.md), so it runs in a background thread: ``publish`` returns at once and
    the host sends the update to each generator when the put is done, holding back later messages
    to that generator so they stay in order."""

    name = "object_store"

    def __init__(self):
        self.puts = 0  # ray.put calls made, for tests and metrics
        self._latest = None  # keeps the latest weights alive for generators started later
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="asyncrl-ray-put")

    def publish(self, state, version: int) -> WeightsUpdate:
        ray = ray_module()
        # the snapshot's shared tensors are pickled once, aliases kept
        fut = self._pool.submit(ray.put, state)
        self.puts += 1
        # Dropping the previous ref lets Ray free it once every generator that was sent it has
        # loaded it (refs inside in-flight call arguments are counted by Ray itself).
        self._latest = fut
        return WeightsUpdate(version, ObjectRefBox(fut, distinct_bytes(state)))

    def close(self) -> None:
        self._latest = None
        self._pool.shutdown(wait=True)  # a second call returns at once


def resolved(update: WeightsUpdate) -> WeightsUpdate:
    """``update`` as it can be sent to an actor: its put finished, the box holding the ref."""
    box = update.payload
    return update if not isinstance(box, ObjectRefBox) or not isinstance(box.ref, Future) else \
        WeightsUpdate(update.version, box.resolved())


class ObjectStoreReceiver(WeightReceiver):
    def receive(self, update: WeightsUpdate):
        box = update.payload
        if not isinstance(box, ObjectRefBox):
            raise TypeError(f"object_store receiver got a {type(box).__name__} payload, expected ObjectRefBox")
        return ray_module().get(box.resolved().ref)


__all__ = ["ObjectRefBox", "ObjectStorePublisher", "ObjectStoreReceiver", "ray_module", "resolved"]
