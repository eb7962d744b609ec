"""The ``broadcast`` weight transport: one ``torch.distributed`` broadcast reaches every generator.

What it does
------------
The learner-side :class:`BroadcastPublisher` is rank 0 of a small process group whose other ranks
are generator workers (:class:`BroadcastReceiver`, made by ``make_receiver("broadcast", spec)``).
``publish(state, version)`` files the snapshot under a sequence number and returns at once with a
``WeightsUpdate`` whose payload is a small picklable :class:`BroadcastManifest` (names, shapes,
dtypes, the alias map and the bucket layout); a background thread moves the bytes. Every distinct
tensor is packed once, at a 64-byte aligned offset, into raw byte buckets of at most
``bucket_bytes`` (so all dtypes share the same few buckets and one collective per bucket moves
them). The receiver allocates the buckets, joins the broadcast of that sequence number and returns
the state dict as views into its buckets; names that alias one tensor in the snapshot (tied
embeddings) come back as one tensor object. Backend: NCCL when the buffers live on CUDA, gloo on
CPU (gloo also takes CUDA tensors, staging them through host memory).

Membership: who takes part in which broadcast
---------------------------------------------
A process group's world size is fixed when it forms, but generators join late (they finish the
request they are generating before they reach the update in their inbox), die at any moment and
come back under a fresh worker id. So nothing in the spec fixes a rank; the receivers *ask* and the
publisher decides each broadcast's membership when it is about to run it:

* Coordination goes through a ``TCPStore`` that the publisher owns (127.0.0.1 by default). A
  receiver posts a *want* (worker id, sequence number, a fresh token) when ``receive`` is called,
  then polls for its *plan* (group epoch, rank, world size) and acknowledges the result.
* A published sequence number ``i`` is broadcast once every *expected* worker wants it. Expected
  are the workers that have asked for weights before (so they are being sent every update), are not
  removed, and still heartbeat (each receiver bumps a counter in the store every
  ``heartbeat_s``). Workers that have never asked (still loading their model) are not waited for.
* Everyone who wants ``i`` at that moment takes part: rank 0 is the publisher, ranks 1..n the
  participants in worker-id order. The group is formed fresh (a new *group epoch*, a new
  ``PrefixStore`` namespace) whenever the participant set differs from the previous broadcast's or
  that broadcast failed; otherwise it is reused, so a steady run forms its group once.
* The latest broadcast snapshot is kept. A worker that asks for it late (restarted, or it was
  loading its model when the broadcast ran) gets a re-broadcast to just the late ones. A worker that
  asks for a sequence number older than the latest broadcast one gets the latest weights (newer
  than the version its ``WeightsUpdate`` names, never older, so the lag bound still holds; the
  receiver logs a warning).
* A rank that dies mid-broadcast makes the collective fail (at once when its sockets close, after
  ``timeout_s`` if it hangs). The publisher drops that group, the surviving receivers post a new
  want for the same sequence number and get a re-broadcast in a new epoch that leaves out workers
  that were removed or stopped heartbeating. Nothing ever blocks the learner: ``publish`` only files
  the snapshot, and a failing background thread surfaces as an error on the next ``publish``.

Limits (what the design does not promise)
-----------------------------------------
* A broadcast runs only when every expected worker has asked for it, so one worker busy
  generating holds up the others' copy of that update (they wait in ``receive``). That is what a
  collective costs; per-worker point-to-point sends would avoid it at N times the learner's
  outbound bandwidth.
* The controller must call :meth:`BroadcastPublisher.remove_worker` for a worker it stops sending
  updates to while its process may still be alive (retired, stopped, declared lost). A worker whose
  process died is left out by itself once its heartbeat is ``liveness_timeout_s`` old; calling
  ``remove_worker`` on ``WorkerLost`` just makes that immediate.
* Snapshots wait in the publisher until broadcast; the lag bound limits how many pile up.
* A participant that dies between asking and joining a *new* group leaves the others in group
  formation until ``timeout_s`` (gloo is handed ``timeout_s / 5`` to form: it waits 5x that for a
  peer that posted its address and died before connecting); then they retry without it.
* NCCL: ranks must be on distinct GPUs (NCCL refuses two ranks on one device). On construction the
  publisher and NCCL receivers default ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` to 2 (abort the
  communicator on a collective timeout instead of tearing the process down; an explicit setting
  is kept). NCCL creates its communicator inside the first collective of a group, with no
  deadline of ours around it, so a participant dying in that window can stall the background
  thread (never the learner). The NCCL path follows the same protocol as gloo but has not been run
  on multi-GPU hardware; its unit test runs only where two GPUs exist.
* On one CPU machine this is slower than the ``queue`` transport (loopback TCP against shared
  memory: 515 MiB in 1.2-1.7 s to one or two receivers on 2 cores, against ~0.5 s); its case is
  NCCL and receivers on other machines (pass a reachable ``host``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import json
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from asyncrl.runtime.messages import WeightsUpdate
from asyncrl.runtime.transport import WeightPublisher, WeightReceiver

log = logging.getLogger(__name__)

ALIGN = 64  # byte alignment of each tensor in a bucket: any dtype view of a slice is legal
DEFAULT_BUCKET_BYTES = 256 << 20

# store keys
_STATE = "state"  # b"open" | b"closed" | b"error: ..." (receivers stop waiting on anything else)
_WANTS = "wants"  # queue of JSON [worker_id, nonce, seq, token]
_ACKS = "acks"  # queue of JSON [worker_id, nonce, token, ok, message]


def _encode(values: tuple) -> bytes:
    # JSON, not pickle: anything that can reach the store's port could otherwise run code here.
    return json.dumps(values).encode()


def _decode(raw: bytes) -> tuple:
    return tuple(json.loads(raw))


def _hb_key(worker_id: int) -> str:
    return f"hb/{worker_id}"


def _plan_key(worker_id: int, nonce: str, token: int) -> str:
    return f"plan/{worker_id}/{nonce}/{token}"


@dataclass(frozen=True)
class Entry:
    """Where one distinct tensor lives: ``nbytes`` bytes at ``offset`` of bucket ``bucket``."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    bucket: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Layout:
    """The bucket layout of one state-dict structure; identical for every publish of one model."""

    entries: tuple[Entry, ...]
    names: tuple[tuple[str, int], ...]  # (state-dict name, entry index): aliases share an index
    bucket_sizes: tuple[int, ...]
    key: str  # identifies the layout, so a plan can say which layout its bytes follow

    @property
    def nbytes(self) -> int:
        return sum(self.bucket_sizes)


@dataclass(frozen=True)
class BroadcastManifest:
    """The ``WeightsUpdate`` payload: which sequence number to join and how to decode it."""

    seq: int
    layout: Layout


@dataclass(frozen=True)
class BroadcastSpec:
    """What a worker needs to make its receiver: ``publisher.receiver_spec(worker_id)``."""

    host: str
    port: int
    worker_id: int
    backend: str  # "gloo" | "nccl"
    device: str  # where the receiver's buffers (and so the returned tensors) live
    timeout_s: float
    heartbeat_s: float
    poll_s: float


def build_layout(state: dict[str, Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Layout:
    """Pack each distinct tensor of ``state`` (aliases found by object identity, as
    ``transport.snapshot`` produces them) into byte buckets; a tensor larger than a bucket gets a
    bucket of its own size."""
    index: dict[int, int] = {}
    tensors: list[Tensor] = []
    names: list[tuple[str, int]] = []
    for name, t in state.items():
        if id(t) not in index:
            index[id(t)] = len(tensors)
            tensors.append(t)
        names.append((name, index[id(t)]))
    entries: list[Entry] = []
    sizes: list[int] = []
    fill = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        start = -(-fill // ALIGN) * ALIGN
        if not sizes or (start + nbytes > bucket_bytes and fill > 0):
            sizes.append(0)
            start = 0
        entries.append(Entry(tuple(t.shape), t.dtype, len(sizes) - 1, start, nbytes))
        fill = start + nbytes
        sizes[-1] = fill
    sig = repr((names, [(e.shape, str(e.dtype), e.bucket, e.offset) for e in entries])).encode()
    return Layout(tuple(entries), tuple(names), tuple(sizes), key=hashlib.sha1(sig).hexdigest()[:16])


def unpack(layout: Layout, buckets: Sequence[Tensor]) -> dict[str, Tensor]:
    """The state dict encoded by ``layout`` over ``buckets`` (uint8 tensors), as views."""
    tensors = []
    for e in layout.entries:
        raw = buckets[e.bucket][e.offset : e.offset + e.nbytes]
        tensors.append(raw.view(e.dtype).view(e.shape))
    return {name: tensors[i] for name, i in layout.names}


def _pack_into(buf: Tensor, layout: Layout, tensors: Sequence[Tensor], bucket: int) -> None:
    for e, t in zip(layout.entries, tensors):
        if e.bucket == bucket and e.nbytes:
            # reshape(-1) first: a 0-dim tensor cannot be viewed as bytes directly, and a
            # non-contiguous one is copied to row-major order, the order unpack() reads back.
            buf[e.offset : e.offset + e.nbytes].copy_(t.reshape(-1).view(torch.uint8))


def _distinct(state: dict[str, Tensor], layout: Layout) -> list[Tensor]:
    first: dict[int, Tensor] = {}
    for name, i in layout.names:
        first.setdefault(i, state[name])
    return [first[i] for i in range(len(layout.entries))]


def _check_backend(backend: str, device: torch.device) -> None:
    if backend == "nccl":
        if not (dist.is_available() and dist.is_nccl_available()):
            raise RuntimeError("broadcast transport: this torch build has no NCCL; use backend='gloo'")
        if device.type != "cuda":
            raise ValueError(f"broadcast transport: NCCL needs CUDA buffers, got device {device}")
        # Default (3) tears the whole process down when a collective times out, e.g. when a
        # generator died mid-broadcast; 2 only aborts the communicator, so the error reaches our
        # retry logic. Read by ProcessGroupNCCL's constructor; an explicit user setting wins.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
    elif backend == "gloo":
        if not (dist.is_available() and dist.is_gloo_available()):
            raise RuntimeError("broadcast transport: this torch build has no gloo")
    else:
        raise ValueError(f"broadcast transport: unknown backend {backend!r}; use 'gloo' or 'nccl'")


def _make_group(store, epoch: int, rank: int, world: int, backend: str, host: str, timeout_s: float):
    """A process group for one epoch that lives beside (never replaces) any default group."""
    prefix = dist.PrefixStore(f"pg/{epoch}/", store)
    timeout = timedelta(seconds=timeout_s)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts.is_high_priority_stream = False
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefix, rank, world, opts)
    opts = dist.ProcessGroupGloo._Options()
    # Gloo waits up to 5x its timeout for a pair to connect, so a peer that died after posting its
    # address but before connecting held formation for 5 * timeout_s (measured: 10 s at a 2 s
    # timeout). Forming with timeout_s / 5 keeps formation within timeout_s; the collectives then
    # get the full timeout_s.
    opts._timeout = timeout / _GLOO_CONNECT_FACTOR
    # Bind gloo to the store's address, not whatever the hostname resolves to.
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    group = dist.ProcessGroupGloo(prefix, rank, world, opts)
    group.set_timeout(timeout)
    return group


_GLOO_CONNECT_FACTOR = 5  # gloo/transport/tcp: a pair's connect deadline is 5x the context timeout


class _Stopped(Exception):
    pass


class _Refused(RuntimeError):
    """The publisher will never serve this receiver; retrying is pointless."""


def _wait_work(work, timeout_s: float, stop: threading.Event | None = None) -> None:
    """Wait for a collective by polling, so a close() or our own deadline can cut it short (NCCL's
    wait() only orders streams; gloo's blocks in C++ for its whole timeout)."""
    deadline = time.monotonic() + timeout_s
    nap = 1e-4
    while not work.is_completed():
        if stop is not None and stop.is_set():
            raise _Stopped()
        if time.monotonic() > deadline:
            raise TimeoutError(f"broadcast did not complete within {timeout_s:.0f} s")
        time.sleep(nap)
        nap = min(nap * 2, 5e-3)
    work.wait()  # raises the collective's own error, if it failed


def _broadcast(group, buf: Tensor, timeout_s: float, stop: threading.Event | None = None) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    _wait_work(group.broadcast([buf], opts), timeout_s, stop)


@dataclass
class _Worker:
    nonce: str | None = None  # the receiver instance last heard from
    served: int = 0  # highest want token planned for (that nonce)
    want: tuple[int, int] | None = None  # (seq, token) waiting to be served
    last_seq: int | None = None  # seq of the most recent want: None until the worker first asks
    removed: bool = False
    hb: int = -1
    hb_at: float = 0.0  # monotonic time the heartbeat counter last moved


@dataclass
class _Snapshot:
    seq: int
    version: int
    layout: Layout
    tensors: list[Tensor]  # distinct tensors, in layout.entries order


class BroadcastPublisher(WeightPublisher):
    """Learner side of the ``broadcast`` transport (see the module docstring for the protocol).

    ``world``: the worker ids to expect (an int ``n`` means ``0..n-1``); more can join later through
    :meth:`receiver_spec` / :meth:`add_worker`. ``device``: where the bucket staging buffer lives
    (CUDA for NCCL). ``timeout_s`` bounds group formation and each bucket's collective;
    ``liveness_timeout_s`` is how long a silent heartbeat takes to count as a dead worker.
    """

    name = "broadcast"

    def __init__(self, world: int | Iterable[int] | None = None, *, backend: str | None = None,
                 device: str | torch.device = "cpu", host: str = "127.0.0.1", port: int = 0,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, timeout_s: float = 120.0,
                 liveness_timeout_s: float = 30.0, heartbeat_s: float = 1.0, poll_s: float = 0.002):
        self.device = torch.device(device)
        self.backend = backend or ("nccl" if self.device.type == "cuda" else "gloo")
        _check_backend(self.backend, self.device)
        if bucket_bytes < ALIGN:
            raise ValueError(f"bucket_bytes must be at least {ALIGN}")
        if liveness_timeout_s <= 2 * heartbeat_s:
            raise ValueError("liveness_timeout_s must exceed two heartbeat periods, or live workers "
                             "would be taken for dead between beats")
        self.host, self.bucket_bytes = host, bucket_bytes
        self.timeout_s, self.liveness_timeout_s = timeout_s, liveness_timeout_s
        self.heartbeat_s, self.poll_s = heartbeat_s, poll_s
        self._store = dist.TCPStore(host, port, None, True, timedelta(seconds=timeout_s),
                                    wait_for_workers=False)
        self.port = self._store.port
        self._store.set(_STATE, "open")

        self._lock = threading.Lock()  # guards _pending, _new_ids, _removed_ids, _error
        self._pending: deque[_Snapshot] = deque()
        self._new_ids: list[int] = []
        self._removed_ids: list[int] = []
        self._error: BaseException | None = None
        self._seq = -1
        self._layouts: dict[tuple, Layout] = {}

        # Owned by the background thread only (the store client is not shared across threads).
        self._workers: dict[int, _Worker] = {}
        self._latest: _Snapshot | None = None
        self._group = None
        self._group_members: tuple[int, ...] | None = None
        self._epoch = 0
        self._stage: Tensor | None = None
        self._cuda_stream = None
        self._hb_read_at = 0.0
        self._acks: dict[tuple[int, str, int], tuple[bool, str]] = {}
        self._awaiting: set[tuple[int, str, int]] = set()
        #: one record per broadcast (seq, workers, epoch, bytes, seconds, ok, failed); tests and
        #: benchmarks read it.
        self.transmissions: deque[dict] = deque(maxlen=1024)

        ids = range(world) if isinstance(world, int) else (world or ())
        for w in ids:
            self.add_worker(w)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asyncrl-broadcast", daemon=True)
        self._thread.start()

    # ---- learner-thread API -------------------------------------------------------------------

    def add_worker(self, worker_id: int) -> None:
        """Track ``worker_id`` (its heartbeat); :meth:`receiver_spec` calls this itself."""
        with self._lock:
            self._new_ids.append(int(worker_id))

    def remove_worker(self, worker_id: int) -> None:
        """Stop waiting for ``worker_id`` for good (lost, stopped or retired). Idempotent."""
        with self._lock:
            self._removed_ids.append(int(worker_id))

    def receiver_spec(self, worker_id: int, device: str | None = None) -> BroadcastSpec:
        """The spec ``make_receiver("broadcast", spec)`` needs in worker ``worker_id``; registers it."""
        self.add_worker(worker_id)
        dev = device or ("cuda" if self.backend == "nccl" else "cpu")
        return BroadcastSpec(self.host, self.port, int(worker_id), self.backend, dev, self.timeout_s,
                             self.heartbeat_s, self.poll_s)

    def publish(self, state: dict[str, Tensor], version: int) -> WeightsUpdate:
        """File ``state`` (a ``transport.snapshot``: it must not be modified afterwards) for the
        background thread and return its update; costs a pass over the names, no copy."""
        with self._lock:
            if self._error is not None:
                raise RuntimeError(f"broadcast publisher failed: {self._error!r}") from self._error
        if self._stop.is_set():
            raise RuntimeError("broadcast publisher is closed")
        sig = tuple((name, id(t), tuple(t.shape), t.dtype) for name, t in state.items())
        # Layouts are cached by structure (names, shapes, dtypes, which names alias which), never
        # by tensor ids, so every publish of one model reuses one layout.
        struct = tuple((name, shape, dtype) for name, _, shape, dtype in sig)
        alias = tuple(_alias_pattern(sig))
        layout = self._layouts.get((struct, alias))
        if layout is None:
            layout = self._layouts[(struct, alias)] = build_layout(state, self.bucket_bytes)
        self._seq += 1
        snap = _Snapshot(self._seq, version, layout, _distinct(state, layout))
        with self._lock:
            self._pending.append(snap)
        return WeightsUpdate(version, BroadcastManifest(snap.seq, layout))

    def close(self) -> None:
        """Stop the background thread (cutting short a broadcast in flight) and the store."""
        if self._stop.is_set():
            return
        self._stop.set()
        # Bounded: the thread checks the stop flag between polls and inside collectives; only a
        # group formation in progress can keep it longer (up to timeout_s), and it is a daemon.
        self._thread.join(10)
        self._store = None  # shuts the store server down: waiting receivers get a clear error

    # ---- background thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            nap = self.poll_s
            while not self._stop.is_set():
                self._poll()
                job = self._next_job()
                if job is not None:
                    self._transmit(*job)
                    continue
                with self._lock:
                    busy = bool(self._pending)
                # Poll fast while a broadcast is due; back off to 10 ms when idle so an idle
                # publisher costs the learner's process next to nothing.
                nap = self.poll_s if busy else min(nap * 2, max(self.poll_s, 0.01))
                time.sleep(nap)
        except _Stopped:
            pass
        except BaseException as e:  # surfaced to the learner by publish(), to receivers by the store
            log.exception("broadcast publisher thread failed")
            with self._lock:
                self._error = e
            try:
                self._store.set(_STATE, f"error: {e!r}")
            except Exception:
                pass
            return
        finally:
            self._drop_group()
        try:
            self._store.set(_STATE, "closed")
        except Exception:
            pass

    def _poll(self) -> None:
        """Fold membership changes, wants, acks and heartbeats into the thread's view."""
        with self._lock:
            new, self._new_ids = self._new_ids, []
            gone, self._removed_ids = self._removed_ids, []
        now = time.monotonic()
        for w in new:
            self._register(w, now)
        for w in gone:
            self._register(w, now).removed = True
        for _ in range(self._store.queue_len(_WANTS)):
            w, nonce, seq, token = _decode(self._store.queue_pop(_WANTS, False))
            info = self._register(w, now)
            if info.nonce != nonce:  # a new receiver instance under this id starts its tokens over
                info.nonce, info.served, info.want = nonce, 0, None
            if info.removed:
                # Alive after all, but the controller gave up on it: tell it instead of ignoring it.
                self._store.set(_plan_key(w, nonce, token), _encode(
                    ("refused", f"worker {w} was removed from the broadcast group (remove_worker)")))
            elif token > info.served:
                info.want, info.last_seq = (seq, token), seq
        for _ in range(self._store.queue_len(_ACKS)):
            w, nonce, token, ok, msg = _decode(self._store.queue_pop(_ACKS, False))
            if (w, nonce, token) in self._awaiting:  # late acks of an abandoned broadcast are moot
                self._acks[(w, nonce, token)] = (ok, msg)
        if now - self._hb_read_at >= min(0.25, self.liveness_timeout_s / 4):
            self._hb_read_at = now
            ids = [w for w, i in self._workers.items() if not i.removed]
            if ids:
                for w, raw in zip(ids, self._store.multi_get([_hb_key(w) for w in ids])):
                    info, count = self._workers[w], int(raw)
                    if count != info.hb:
                        info.hb, info.hb_at = count, now

    def _register(self, worker_id: int, now: float) -> _Worker:
        info = self._workers.get(worker_id)
        if info is None:
            self._store.add(_hb_key(worker_id), 0)  # creates the key, so multi_get never blocks
            info = self._workers[worker_id] = _Worker(hb_at=now)
        return info

    def _alive(self, info: _Worker) -> bool:
        return not info.removed and time.monotonic() - info.hb_at < self.liveness_timeout_s

    def _next_job(self) -> tuple[_Snapshot, list[int]] | None:
        wanting = {w: i.want for w, i in self._workers.items() if i.want is not None and not i.removed}
        latest = self._latest
        # Late askers first: they are idle in receive(), and every pending seq waits for them anyway.
        late = [w for w, (seq, _) in wanting.items() if latest is not None and seq <= latest.seq]
        if late:
            return latest, late
        with self._lock:
            head = self._pending[0] if self._pending else None
        if head is None:
            return None
        expected = [w for w, i in self._workers.items()
                    if i.last_seq is not None and i.last_seq < head.seq and self._alive(i)]
        if expected:  # someone who will ask for head has not yet
            return None
        return head, [w for w, (seq, _) in wanting.items() if seq == head.seq]

    def _transmit(self, snap: _Snapshot, workers: list[int]) -> None:
        with self._lock:
            if self._pending and self._pending[0] is snap:
                self._pending.popleft()
        self._latest = snap  # kept for late askers until a newer one has been broadcast
        if not workers:
            return
        members = tuple(sorted(workers))
        tokens = {}
        for w in members:
            info = self._workers[w]
            tokens[w] = (info.nonce, info.want[1])
            info.served, info.want = info.want[1], None
        fresh = self._group is None or self._group_members != members
        if fresh:
            self._drop_group()
            self._epoch += 1
        world = len(members) + 1
        for rank, w in enumerate(members, start=1):
            plan = ("go", self._epoch, rank, world, snap.seq, snap.layout.key)
            self._store.set(_plan_key(w, *tokens[w]), _encode(plan))
        t0 = time.perf_counter()
        error = ""
        try:
            if fresh:
                self._group = _make_group(self._store, self._epoch, 0, world, self.backend, self.host,
                                          self.timeout_s)
                self._group_members = members
            self._send(snap)
        except _Stopped:
            raise
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            self._drop_group()
        seconds = time.perf_counter() - t0
        # If our own send failed the group is gone and the survivors are re-asking already; waiting
        # for a dead rank's ack would only delay their re-broadcast.
        failed = list(members) if error else self._await_acks(members, tokens)
        if error or failed:
            # A broken group cannot be reused; survivors re-ask and get a new epoch without the dead.
            self._drop_group()
            log.warning("broadcast of seq %d to workers %s failed (%s); survivors will retry",
                        snap.seq, list(members), error or f"workers {failed} failed")
        self.transmissions.append(dict(seq=snap.seq, workers=members, epoch=self._epoch,
                                       bytes=snap.layout.nbytes, seconds=seconds, ok=not (error or failed),
                                       failed=tuple(failed), error=error, fresh_group=fresh))

    def _send(self, snap: _Snapshot) -> None:
        size = max(snap.layout.bucket_sizes, default=0)
        if self._stage is None or self._stage.numel() < size:
            # One staging buffer, reused bucket after bucket: each bucket's collective has
            # completed (polled) before the next is packed into it.
            self._stage = torch.empty(size, dtype=torch.uint8, device=self.device)
        if self.device.type == "cuda":
            # Staging copies on a stream of our own, so they never queue behind (or hold up) the
            # learner's kernels on the default stream.
            if self._cuda_stream is None:
                self._cuda_stream = torch.cuda.Stream(self.device)
            ctx = torch.cuda.stream(self._cuda_stream)
        else:
            ctx = _nullcontext()
        with ctx:
            for b, n in enumerate(snap.layout.bucket_sizes):
                if n:
                    buf = self._stage[:n]
                    _pack_into(buf, snap.layout, snap.tensors, b)
                    _broadcast(self._group, buf, self.timeout_s, self._stop)

    def _await_acks(self, members: tuple[int, ...], tokens: dict) -> list[int]:
        """Workers whose copy failed: they said so, died, were removed or never answered."""
        deadline = time.monotonic() + self.timeout_s
        pending = set(members)
        failed = []
        self._awaiting = {(w, *tokens[w]) for w in members}
        self._poll()  # acks that arrived during the send
        while pending:
            if self._stop.is_set():
                raise _Stopped()
            for w in list(pending):
                ack = self._acks.pop((w, *tokens[w]), None)
                if ack is not None:
                    pending.discard(w)
                    if not ack[0]:
                        failed.append(w)
                elif not self._alive(self._workers[w]) or time.monotonic() > deadline:
                    pending.discard(w)
                    failed.append(w)
            if failed:
                # The group is broken: stop waiting for the rest (a rank that died after the root
                # finished sending would hold us for liveness_timeout_s). Their acks no longer
                # matter: one that got its copy keeps it, one that failed asks again.
                failed += sorted(pending)
                break
            if pending:
                time.sleep(self.poll_s)
                self._poll()
        self._awaiting, self._acks = set(), {}
        return sorted(failed)

    def _drop_group(self) -> None:
        # Destroying our end closes its sockets, so peers blocked in a collective fail at once
        # instead of waiting out their timeout.
        self._group, self._group_members = None, None


def _alias_pattern(sig) -> Iterable[int]:
    """For each name, the index of the first name holding the same tensor object."""
    first: dict[int, int] = {}
    for k, (_, tid, _, _) in enumerate(sig):
        yield first.setdefault(tid, k)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _heartbeat(ref: weakref.ref, host: str, port: int, key: str, every_s: float, stop: threading.Event):
    """Bump ``key`` every ``every_s`` while the receiver lives, on a store connection of its own."""
    try:
        store = dist.TCPStore(host, port, None, False, timedelta(seconds=30))
        while ref() is not None and not stop.wait(every_s):
            store.add(key, 1)
    except Exception:  # the publisher went away; receive() reports that with a clear message
        return


class BroadcastReceiver(WeightReceiver):
    """Worker side of the ``broadcast`` transport; ``spec`` is ``publisher.receiver_spec(id)``."""

    max_attempts = 5  # consecutive failed copies of one update before receive() gives up

    def __init__(self, spec: BroadcastSpec | None):
        if not isinstance(spec, BroadcastSpec):
            raise ValueError("the broadcast transport needs a receiver spec in every worker: the host must "
                             f"put publisher.receiver_spec(worker_id) in the WorkerSpec (got {spec!r})")
        self.spec = spec
        self.device = torch.device(spec.device)
        _check_backend(spec.backend, self.device)
        self._store = dist.TCPStore(spec.host, spec.port, None, False, timedelta(seconds=spec.timeout_s))
        self.nonce = uuid.uuid4().hex
        self._token = 0
        self._group = None
        self._epoch: int | None = None
        self._stop = threading.Event()
        threading.Thread(target=_heartbeat, args=(weakref.ref(self), spec.host, spec.port,
                                                  _hb_key(spec.worker_id), spec.heartbeat_s, self._stop),
                         name="asyncrl-broadcast-hb", daemon=True).start()
        self._store.add(_hb_key(spec.worker_id), 1)  # alive from the start, not after one period

    def __del__(self):
        stop = getattr(self, "_stop", None)  # absent when __init__ raised early
        if stop is not None:
            stop.set()

    def close(self) -> None:
        self._stop.set()
        self._group = None

    def receive(self, update: WeightsUpdate) -> dict[str, Tensor]:
        m = update.payload
        if not isinstance(m, BroadcastManifest):
            raise TypeError(f"broadcast receiver got a {type(m).__name__} payload, not a BroadcastManifest: "
                            "publisher and receivers must both use the broadcast transport")
        last = ""
        for _ in range(self.max_attempts):
            plan = self._ask(m.seq)
            try:
                state = self._join(m, plan)
            except _Refused:
                raise
            except Exception as e:
                last = f"{type(e).__name__}: {e}"
                self._group, self._epoch = None, None  # a failed group is unusable; the retry forms anew
                self._ack(False, last)
                log.warning("worker %d: broadcast copy of seq %d failed (%s); asking again",
                            self.spec.worker_id, m.seq, last)
                continue
            self._ack(True, "")
            return state
        raise RuntimeError(f"worker {self.spec.worker_id}: {self.max_attempts} broadcast attempts for weights "
                           f"version {update.version} failed; last error: {last}")

    def _ask(self, seq: int) -> tuple:
        """Post a want for ``seq`` and wait for the publisher's plan for it."""
        self._token += 1
        key = _plan_key(self.spec.worker_id, self.nonce, self._token)
        nap, next_state = self.spec.poll_s / 4, 0.0
        try:
            self._store.queue_push(_WANTS, _encode((self.spec.worker_id, self.nonce, seq, self._token)))
            while not self._store.check([key]):
                if time.monotonic() >= next_state:
                    next_state = time.monotonic() + 0.2
                    state = self._store.get(_STATE).decode()
                    if state != "open":
                        raise RuntimeError(f"weight publisher is {state}")
                time.sleep(nap)
                nap = min(nap * 2, 10 * self.spec.poll_s)
            plan = _decode(self._store.get(key))
            self._store.delete_key(key)
        except dist.DistError as e:
            raise RuntimeError(f"weight publisher at {self.spec.host}:{self.spec.port} is gone "
                               f"(learner closed or crashed): {e}") from e
        return plan

    def _join(self, m: BroadcastManifest, plan: tuple) -> dict[str, Tensor]:
        if plan[0] == "refused":
            raise _Refused(plan[1])
        _, epoch, rank, world, served_seq, layout_key = plan
        if layout_key != m.layout.key:
            raise RuntimeError(f"publisher served seq {served_seq} with a different tensor layout than the "
                               f"manifest of seq {m.seq}: the model's structure changed between publishes")
        if self._epoch != epoch:
            self._group, self._epoch = None, None  # close the old group before forming the next
            self._group = _make_group(self._store, epoch, rank, world, self.spec.backend, self.spec.host,
                                      self.spec.timeout_s)
            self._epoch = epoch
        buckets = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in m.layout.bucket_sizes]
        ctx = torch.cuda.device(self.device) if self.device.type == "cuda" else _nullcontext()
        with ctx:
            for buf in buckets:
                if buf.numel():  # a bucket of zero-size tensors only has nothing to move
                    self._receive_bucket(buf)
        if served_seq != m.seq:
            log.warning("worker %d asked for seq %d after seq %d had been broadcast; it got seq %d's "
                        "(newer) weights", self.spec.worker_id, m.seq, served_seq, served_seq)
        return unpack(m.layout, buckets)

    def _receive_bucket(self, buf: Tensor) -> None:
        _broadcast(self._group, buf, self.spec.timeout_s)

    def _ack(self, ok: bool, message: str) -> None:
        try:
            self._store.queue_push(_ACKS, _encode((self.spec.worker_id, self.nonce, self._token, ok,
                                                        message)))
        except dist.DistError as e:
            raise RuntimeError(f"weight publisher at {self.spec.host}:{self.spec.port} is gone: {e}") from e


__all__ = ["BroadcastManifest", "BroadcastPublisher", "BroadcastReceiver", "BroadcastSpec", "Layout",
           "build_layout", "unpack"]
