"""The weight transports by name (``cfg.asynchrony.weight_transport``): :func:`make_publisher` for the
learner's side, :func:`make_receiver` for a worker's. The base classes and what the transports share
live in ``transport.py``; each transport in its own module (``broadcast.py``, ``object_store.py``).
"""

from __future__ import annotations

from typing import Any

from asyncrl.runtime.broadcast import BroadcastPublisher, BroadcastReceiver
from asyncrl.runtime.object_store import ObjectStorePublisher, ObjectStoreReceiver
from asyncrl.runtime.transport import TRANSPORTS, DirectPublisher, DirectReceiver, WeightPublisher, WeightReceiver


def make_publisher(name: str, **kwargs) -> WeightPublisher:
    """The learner-side half of transport ``name`` (``cfg.asynchrony.weight_transport``, resolved)."""
    if name in ("inprocess", "queue"):
        return DirectPublisher(name)
    if name == "object_store":
        return ObjectStorePublisher(**kwargs)
    if name == "broadcast":
        return BroadcastPublisher(**kwargs)
    raise ValueError(f"unknown weight transport {name!r}; known: {', '.join(TRANSPORTS)}")


def make_receiver(name: str, spec: Any = None) -> WeightReceiver:
    """The worker-side half of transport ``name``; ``spec`` is what its publisher's
    ``receiver_spec()`` returned (connection details), None for transports that need none."""
    if name in ("inprocess", "queue"):
        return DirectReceiver()
    if name == "object_store":
        return ObjectStoreReceiver()
    if name == "broadcast":
        return BroadcastReceiver(spec)
    raise ValueError(f"unknown weight transport {name!r}; known: {', '.join(TRANSPORTS)}")


__all__ = ["make_publisher", "make_receiver"]
