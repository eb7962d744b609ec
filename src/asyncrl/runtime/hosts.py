"""Hosts: where generator workers run. The controller (``controller.py``) and its scheduler see
only these two protocols, so inline, thread, process and Ray workers are interchangeable.

A host starts workers (and restarts them under a fresh worker id after a loss), carries
``ToWorker`` messages to them in order, and hands back every ``FromWorker`` message, including a
``WorkerLost`` when it notices that a worker died without saying so (process exited, actor gone).
"""

from __future__ import annotations

import contextlib
import pickle
import queue
import sys
import threading
import time
import types
from collections import deque
from typing import Protocol

from asyncrl.config import Config
from asyncrl.runtime.messages import FromWorker, StopWorker, ToWorker, WorkerLost, WorkerReady
from asyncrl.runtime.spec import WorkerSpec
from asyncrl.runtime.transport import DirectPublisher, DirectReceiver, WeightPublisher
from asyncrl.runtime.transports import make_publisher
from asyncrl.runtime.worker import GeneratorService, build_generator, error_message, worker_loop

# Requests a thread/process worker may hold (one running, one queued) so it never idles waiting
# for the controller while the learner is busy; the lag bound applies to every request anyway.
WORKER_DEPTH = 2


class Worker(Protocol):
    worker_id: int

    def send(self, msg: ToWorker) -> None:
        """Deliver ``msg``; messages to one worker are handled in the order sent."""
        ...

    def alive(self) -> bool: ...

    def kill(self) -> None:
        """Stop at once, without a reply (fault injection in tests; dead workers)."""
        ...

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask to exit and wait up to ``timeout_s``; kill if still running."""
        ...


class Host(Protocol):
    name: str
    depth: int | None  # requests one worker may hold; None = unbounded (inline: served on send)
    publisher: WeightPublisher  # made and owned by the host; closed once, by close()

    def start(self, worker_id: int, start_version: int, slot: int = 0) -> Worker:
        """Start a worker under ``worker_id`` (never reused) in generator ``slot``; it reports
        ``WorkerReady``."""
        ...

    def next_message(self, timeout_s: float) -> FromWorker | None:
        """The next message from any worker, or None after ``timeout_s`` without one."""
        ...

    def close(self) -> None:
        """Stop every worker and release what the host started, its publisher included."""
        ...


class _LocalWorker:
    """A worker in a thread or a spawned process, fed through its own inbox queue."""

    def __init__(self, kind: str, spec: WorkerSpec, outbox, ctx):
        self.kind = kind
        self.worker_id = spec.worker_id
        self.inbox = ctx.Queue() if kind == "process" else queue.Queue()
        runner = ctx.Process if kind == "process" else threading.Thread
        self._runner = runner(target=_run_local, args=(spec, outbox, self.inbox), daemon=True,
                              name=f"asyncrl-gen-{self.worker_id}")
        if kind == "process":
            with main_module_hidden():
                self._runner.start()
        else:
            self._runner.start()

    def send(self, msg: ToWorker) -> None:
        self.inbox.put(msg)

    def alive(self) -> bool:
        return self._runner.is_alive()

    @property
    def pid(self) -> int | None:
        return getattr(self._runner, "pid", None)  # None for threads

    @property
    def exitcode(self):
        return getattr(self._runner, "exitcode", None)

    def kill(self) -> None:
        if self.kind == "process":
            self._runner.kill()
            self._runner.join(5)
            self._drop_inbox()
        # a thread cannot be killed; a thread worker only dies by raising

    def _drop_inbox(self) -> None:
        """Nobody reads a dead process's inbox: weights still queued there must not make this
        process wait at exit for its feeder thread to flush them into a full pipe."""
        if self.kind == "process":
            self.inbox.cancel_join_thread()
            self.inbox.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            self.inbox.put(StopWorker())
        except (ValueError, OSError):
            pass
        self._runner.join(timeout_s)
        if self.kind == "process" and self._runner.is_alive():
            self._runner.terminate()
            self._runner.join(2)
        if self.kind == "process" and not self._runner.is_alive():
            self._drop_inbox()


class PipeOutbox:
    """A process worker's own reply channel: the write end of a one-way pipe, one writer, no lock.

    Why not one shared ``multiprocessing.Queue`` for all workers: a worker SIGKILLed (OOM killer,
    a fault) while its queue feeder holds the queue's write lock leaves that lock held for good,
    and every other worker then blocks on its next reply: the run hangs. With a pipe per worker a
    killed writer can only cut its own message short, which the controller reads as end of file,
    and so as the worker's loss."""

    def __init__(self, conn):
        self.conn = conn

    def put(self, msg) -> None:
        self.conn.send(msg)


def _run_local(spec: WorkerSpec, outbox, inbox) -> None:
    worker_loop(spec, inbox, outbox)


def shard_of(cfg_dict: dict, slot: int) -> tuple[int, int] | None:
    """The prompt shard of generator ``slot``: (slot, num_generators) with ``prompt_sharding``."""
    a = cfg_dict["asynchrony"]
    return (slot, a["num_generators"]) if a.get("prompt_sharding") else None


# Serialises main_module_hidden between threads that start worker processes.
_SPAWN_LOCK = threading.Lock()


@contextlib.contextmanager
def main_module_hidden():
    """Start spawned processes that do not re-run the caller's main module.

    multiprocessing's spawn makes each child import ``__main__`` again (from its ``__spec__`` name,
    else its ``__file__``: ``multiprocessing.spawn.get_preparation_data``) so that pickled references
    to ``__main__`` resolve. A worker needs none of that: its target lives in this package and
    the user's objects travel by value (cloudpickle, ``TaskInputs.dumps``). Re-running it breaks
    ``asyncrl.train`` called from a script without an ``if __name__ == "__main__":`` guard (the
    child trains again and multiprocessing refuses to spawn while bootstrapping) and from standard
    input (no file ``<stdin>`` to run). So while ``Process.start`` takes its snapshot, ``__main__`` is
    an empty module with neither ``__spec__`` nor ``__file__``, which spawn treats as an interactive
    session (``python -c``, a notebook: nothing to import).

    Why this and not the alternatives: copying ``Popen._launch`` to drop the two keys from the
    preparation data would tie us to a private function's body in each Python version; starting
    workers as ``python -m`` subprocesses would lose what spawn gives the workers (inherited
    queues, the shared authkey that torch needs to pass shared-memory tensors). The swap lasts
    only while the child's start-up data is written (milliseconds, under a lock)."""
    with _SPAWN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is None:
                del sys.modules["__main__"]
            else:
                sys.modules["__main__"] = main


class LocalHost:
    """``workers: thread`` or ``process``: workers on this machine. Thread workers share one
    outbox queue; each process worker replies through its own pipe (:class:`PipeOutbox`)."""

    depth = WORKER_DEPTH

    def __init__(self, kind: str, cfg: Config, policy_path: str, ref_path: str, threads: int | None, inputs=None):
        """``inputs``: the :class:`asyncrl.tasks.TaskInputs` of :func:`asyncrl.train` (None = the
        task from the config alone); thread workers share the objects, processes get a copy."""
        if kind not in ("thread", "process"):
            raise ValueError(f"LocalHost hosts thread or process workers, not {kind!r}")
        self.name = kind
        self.cfg_dict = cfg.model_dump()
        self.policy_path, self.ref_path = policy_path, ref_path
        self.threads = threads if kind == "process" else None
        self.inputs = inputs.dumps() if inputs is not None and kind == "process" else inputs
        if kind == "process":
            import torch.multiprocessing as mp

            # spawn, not fork: forking a process that already runs torch thread pools can deadlock.
            self._ctx = mp.get_context("spawn")
        else:
            self._ctx = queue  # queue.Queue for inboxes and the outbox
        self._outbox = queue.Queue()  # thread workers
        self._readers: dict = {}  # process workers: read end of each one's reply pipe -> worker id
        self._pending: deque = deque()  # messages read but not yet handed out
        self.publisher = make_publisher(cfg.asynchrony.weight_transport)
        self.workers: dict[int, _LocalWorker] = {}
        self._lost: set[int] = set()

    def start(self, worker_id: int, start_version: int, slot: int = 0) -> Worker:
        spec = WorkerSpec(self.cfg_dict, self.policy_path, self.ref_path, worker_id, start_version,
                          transport=self.publisher.name, receiver_spec=self.publisher.receiver_spec(worker_id),
                          threads=self.threads, inputs=self.inputs, shard=shard_of(self.cfg_dict, slot))
        if self.name == "process":
            reader, writer = self._ctx.Pipe(duplex=False)
            outbox = PipeOutbox(writer)
        else:
            outbox = self._outbox
        w = _LocalWorker(self.name, spec, outbox, self._ctx)
        if self.name == "process":
            writer.close()  # the child has its own copy: once it exits, the read end sees end of file
            self._readers[reader] = worker_id
        self.workers[worker_id] = w
        return w

    def _lost_message(self, wid: int) -> WorkerLost | None:
        if wid in self._lost:
            return None
        self._lost.add(wid)
        w = self.workers[wid]
        if w.kind == "process":
            w._runner.join(1)  # reap it, for its exit code
        # A worker that raised has sent its WorkerError first; one that was killed or ran out of
        # memory says nothing, so this is how the controller learns of it.
        return WorkerLost(wid, f"{self.name} worker exited (exit code {w.exitcode})")

    def _next_from_pipes(self, timeout_s: float) -> FromWorker | None:
        from multiprocessing.connection import wait

        if not self._pending:
            if not self._readers:
                time.sleep(timeout_s)
                return None
            for conn in wait(list(self._readers), timeout_s):
                wid = self._readers[conn]
                try:
                    self._pending.append(conn.recv())
                except (EOFError, OSError, pickle.UnpicklingError):  # exited, or killed mid-message
                    del self._readers[conn]
                    conn.close()
                    lost = self._lost_message(wid)
                    if lost is not None:
                        self._pending.append(lost)
        return self._pending.popleft() if self._pending else None

    def next_message(self, timeout_s: float) -> FromWorker | None:
        if self.name == "process":
            return self._next_from_pipes(timeout_s)
        try:
            return self._outbox.get(timeout=timeout_s)
        except queue.Empty:
            pass
        for wid, w in self.workers.items():
            if wid not in self._lost and not w.alive():
                return self._lost_message(wid)
        return None

    def close(self) -> None:
        """Stop every worker, then close the publisher (this host's; closed here only)."""
        try:
            for w in self.workers.values():
                w.stop()
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        finally:
            self.publisher.close()


class _InlineWorker:
    """The generator in the controller's own thread: a request is served the moment it is sent."""

    def __init__(self, service: GeneratorService, replies: deque):
        self.worker_id = service.worker_id
        self._service = service
        self._replies = replies

    def send(self, msg: ToWorker) -> None:
        if isinstance(msg, StopWorker):
            return
        try:
            reply = self._service.handle(msg)
        except Exception as e:  # the same path as a thread or process worker's error
            reply = error_message(self.worker_id, e)
        if reply is not None:
            self._replies.append(reply)

    def alive(self) -> bool:
        return True

    def kill(self) -> None:
        self._service.close()

    def stop(self, timeout_s: float = 0.0) -> None:
        self._service.close()


class InlineHost:
    """``workers: inline``: nothing overlaps. With ``max_lag: 0`` it is synchronous training with
    no hand-off between roles; with ``max_lag: N`` the scheduler dispatches N requests ahead, so
    every batch is trained exactly N updates after the weights that generated it (a simulated lag)."""

    name = "inline"
    depth = None

    def __init__(self, cfg: Config, policy_path: str, ref_path: str, inputs=None):
        self.cfg_dict, self.policy_path, self.ref_path = cfg.model_dump(), policy_path, ref_path
        self.inputs = inputs  # asyncrl.train's TaskInputs, used as they are (same process)
        self.publisher = DirectPublisher("inprocess")
        self._replies: deque = deque()
        self._workers: dict[int, _InlineWorker] = {}

    def start(self, worker_id: int, start_version: int, slot: int = 0) -> Worker:
        spec = WorkerSpec(self.cfg_dict, self.policy_path, self.ref_path, worker_id, start_version,
                          transport=self.publisher.name, inputs=self.inputs, shard=shard_of(self.cfg_dict, slot))
        gen = build_generator(spec)
        self._replies.append(WorkerReady(worker_id))
        worker = self._workers[worker_id] = _InlineWorker(GeneratorService(gen, DirectReceiver(), worker_id),
                                                          self._replies)
        return worker

    def next_message(self, timeout_s: float) -> FromWorker | None:
        return self._replies.popleft() if self._replies else None

    def close(self) -> None:
        try:
            for w in self._workers.values():
                w.stop()
        finally:
            self.publisher.close()
