"""Ctrl-C and SIGTERM during a run: the first signal asks to stop, a second one aborts.

``stop_on_signals(on_stop)`` is the one handler every runner installs (the controller in the
learner's process; the driver of ``ray_learner: actor`` forwards the stop to its actor). SIGTERM is
what schedulers and clusters send before they kill a job, so it behaves like Ctrl-C: the first one
calls ``on_stop(name)`` (finish the current step, write a final checkpoint, return) and says so
(a warning on the ``asyncrl`` logger); a second one raises :class:`RunAborted` at once, without
saving. Python only lets the main thread install handlers: elsewhere (a run started from a thread, a Ray actor's worker thread)
nothing is installed and the caller's own stop path (``Controller.request_stop``) is the only one.
The previous handlers come back when the block exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from asyncrl.errors import RunAborted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalStop:
    """The handler: counts the signals it received; the first stops, any later one aborts."""

    def __init__(self, on_stop: Callable[[str], None]):
        self.on_stop = on_stop
        self.received: list[str] = []  # names of the signals received, in order

    def __call__(self, signum: int, frame=None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) > 1:
            raise RunAborted(name)
        log.warning("%s: stopping after this step and writing a final checkpoint (send it again to abort "
                    "without saving)", name)
        self.on_stop(name)


@contextmanager
def stop_on_signals(on_stop: Callable[[str], None]) -> Iterator[SignalStop]:
    """Within the block, SIGINT / SIGTERM call ``on_stop(signal name)`` the first time and raise
    ``RunAborted`` the second (main thread only; elsewhere nothing changes)."""
    handler = SignalStop(on_stop)
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            old[sig] = signal.signal(sig, handler)
    try:
        yield handler
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
