"""The ``broadcast`` weight transport (``runtime/broadcast.py``) over gloo on CPU.

The publisher runs in the test process, which also plays the controller (it sends each update to
the receivers it considers live). Receivers run in spawned *agent* processes driven by command
queues, so one agent can host successive receivers and a killed one is a real SIGKILLed process.
Agents are spawned once per module, in parallel, because importing torch dominates their cost.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from asyncrl.runtime.broadcast import (
    ALIGN, BroadcastManifest, BroadcastPublisher, BroadcastReceiver, BroadcastSpec, build_layout, unpack,
)
from asyncrl.runtime.messages import WeightsUpdate
from asyncrl.runtime.transport import snapshot
from asyncrl.runtime.transports import make_receiver

BUCKET = 64 << 10  # small buckets, so every test moves several per publish


# ---- helpers -------------------------------------------------------------------------------------


def make_state(seed: int, big: int = 1 << 16) -> dict[str, torch.Tensor]:
    """A snapshot-like state with everything a transport can get wrong: tied aliases, odd dtypes,
    a 0-dim and an empty tensor, a non-contiguous view, NaN and -0.0 (bitwise, not ==), and one
    tensor larger than a bucket."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(64, 48, generator=g)
    emb[0, 0], emb[0, 1] = float("nan"), -0.0
    return {
        "model.embed_tokens.weight": emb,
        "lm_head.weight": emb,  # tied: the same tensor object, as transport.snapshot produces
        "big": torch.randn(big, generator=g),
        "half": torch.randn(7, 3, generator=g).to(torch.bfloat16),
        "ids": torch.randint(0, 1000, (13,), generator=g),
        "mask": torch.rand(5, generator=g) > 0.5,
        "scalar": torch.tensor(float(seed) + 0.25),
        "empty": torch.empty(0, 4),
        "transposed": torch.randn(6, 9, generator=g).t(),
        "int8": torch.randint(-128, 127, (3,), dtype=torch.int8, generator=g),
    }


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def alias_groups(state: dict[str, torch.Tensor]) -> list[tuple[str, ...]]:
    groups: dict[int, list[str]] = {}
    for name, t in state.items():
        groups.setdefault(id(t), []).append(name)
    return sorted(tuple(sorted(g)) for g in groups.values() if len(g) > 1)


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert bits(got[name]) == bits(t), f"{name}: bytes differ"


# ---- agent processes -----------------------------------------------------------------------------


def _agent(cmds, results) -> None:
    """One spawned process hosting at most one receiver at a time."""
    rx = None
    while True:
        cmd = cmds.get()
        try:
            if cmd[0] == "connect":
                rx = None  # the previous receiver (if any) stops its heartbeat when collected
                rx = make_receiver("broadcast", cmd[1])
                results.put(("connected", os.getpid()))
            elif cmd[0] == "recv":
                _, update, delay_s, die_at_bucket = cmd
                if die_at_bucket is not None:
                    # Die inside the collective, after copying die_at_bucket buckets, as a SIGKILLed
                    # generator would: no ack, sockets closed by the kernel.
                    done = [0]
                    real = rx._receive_bucket

                    def dying(buf, real=real, done=done):
                        if done[0] == die_at_bucket:
                            os._exit(9)
                        real(buf)
                        done[0] += 1

                    rx._receive_bucket = dying
                time.sleep(delay_s)
                t_ask = time.time()
                state = rx.receive(update)
                results.put(("state", update.version, t_ask, time.time(), pickle.dumps(
                    ({k: v.clone() for k, v in state.items()}, alias_groups(state)))))
            elif cmd[0] == "exit":
                return
        except Exception as e:  # reported to the test, which asserts on it
            results.put(("error", f"{type(e).__name__}: {e}"))


class Agent:
    def __init__(self, ctx):
        self.cmds, self.results = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_agent, args=(self.cmds, self.results), daemon=True)
        self.proc.start()

    def connect(self, spec: BroadcastSpec, timeout_s: float = 60) -> None:
        self.cmds.put(("connect", spec))
        kind, *_ = self.results.get(timeout=timeout_s)
        assert kind == "connected"

    def recv(self, update: WeightsUpdate, delay_s: float = 0.0, die_at_bucket: int | None = None) -> None:
        self.cmds.put(("recv", update, delay_s, die_at_bucket))

    def result(self, timeout_s: float = 20):
        """(version, t_ask, t_done, state, alias groups) of the last recv; raises on an error reply."""
        msg = self.results.get(timeout=timeout_s)
        if msg[0] == "error":
            raise AssertionError(f"receiver failed: {msg[1]}")
        _, version, t_ask, t_done, blob = msg
        state, groups = pickle.loads(blob)
        return version, t_ask, t_done, state, groups

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)

    def close(self) -> None:
        if self.proc.is_alive():
            self.cmds.put(("exit",))
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


@pytest.fixture(scope="module")
def agents():
    ctx = mp.get_context("spawn")
    pool = [Agent(ctx) for _ in range(4)]  # started together: their torch imports overlap
    yield pool
    for a in pool:
        a.close()


def timed_publish(pub: BroadcastPublisher, state, version: int) -> tuple[WeightsUpdate, float]:
    """publish() under a watchdog: one that waited for its receivers (who are only sent the update
    after it returns) would deadlock; this turns that into a failure."""
    box: dict = {}

    def run():
        t0 = time.perf_counter()
        box["update"] = pub.publish(state, version)
        box["s"] = time.perf_counter() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    assert "update" in box, "publish() blocked (waiting for receivers?)"
    return box["update"], box["s"]


def wait_for(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ---- in-process tests ----------------------------------------------------------------------------


def test_layout_packs_distinct_tensors_aligned_and_round_trips():
    state = make_state(0)
    layout = build_layout(state, BUCKET)
    distinct = {id(t) for t in state.values()}
    assert len(layout.entries) == len(distinct) == len(state) - 1  # the tied pair is stored once
    idx = dict(layout.names)
    assert idx["model.embed_tokens.weight"] == idx["lm_head.weight"]
    assert all(e.offset % ALIGN == 0 for e in layout.entries)
    assert len(layout.bucket_sizes) >= 2 and max(layout.bucket_sizes) > BUCKET  # big tensor: own bucket
    for e in layout.entries:  # no two tensors overlap inside a bucket
        assert e.offset + e.nbytes <= layout.bucket_sizes[e.bucket]
    # Pack as the publisher does, then decode as the receiver does.
    from asyncrl.runtime.broadcast import _distinct, _pack_into

    buckets = [torch.zeros(n, dtype=torch.uint8) for n in layout.bucket_sizes]
    for b, buf in enumerate(buckets):
        _pack_into(buf, layout, _distinct(state, layout), b)
    out = unpack(layout, buckets)
    assert_same(out, state)
    assert out["model.embed_tokens.weight"] is out["lm_head.weight"]
    # The key identifies the structure, not the values, and is stable across processes.
    assert build_layout(make_state(1), BUCKET).key == layout.key
    assert build_layout(make_state(1, big=10), BUCKET).key != layout.key


def test_snapshot_of_a_tied_model_round_trips_through_threads():
    """The real snapshot() of a module with tied weights, two receivers in threads of this process."""
    emb = torch.nn.Embedding(50, 16)
    model = torch.nn.Sequential(emb, torch.nn.Linear(16, 50, bias=False))
    model[1].weight = emb.weight
    state = snapshot(model, torch.float32)
    pub = BroadcastPublisher([0, 1], bucket_bytes=1024)
    try:
        rxs = [make_receiver("broadcast", pub.receiver_spec(w)) for w in (0, 1)]
        update, _ = timed_publish(pub, state, 3)
        assert isinstance(update.payload, BroadcastManifest) and update.version == 3
        assert len(pickle.dumps(update)) < 4096  # a manifest, not the tensors
        out: dict[int, dict] = {}
        threads = [threading.Thread(target=lambda w=w: out.__setitem__(w, rxs[w].receive(update))) for w in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        for w in (0, 1):
            assert_same(out[w], state)
            assert out[w]["0.weight"] is out[w]["1.weight"]
    finally:
        pub.close()


def test_clear_errors():
    with pytest.raises(ValueError, match="receiver_spec"):
        make_receiver("broadcast", None)  # what a host that passes no transport_spec gets
    with pytest.raises(ValueError, match="unknown backend"):
        BroadcastPublisher(backend="mpi")
    if not torch.cuda.is_available():
        with pytest.raises((RuntimeError, ValueError), match="NCCL"):
            BroadcastPublisher(backend="nccl", device="cuda")
    pub = BroadcastPublisher(1)
    spec = pub.receiver_spec(0)
    assert pickle.loads(pickle.dumps(spec)) == spec and spec.host == "127.0.0.1" and spec.port == pub.port
    rx = BroadcastReceiver(spec)
    with pytest.raises(TypeError, match="BroadcastManifest"):
        rx.receive(WeightsUpdate(0, {"w": torch.zeros(1)}))
    pub.close()
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish({"w": torch.zeros(1)}, 1)
    # A receiver still waiting when the learner goes away fails instead of hanging.
    update = WeightsUpdate(0, BroadcastManifest(0, build_layout({"w": torch.zeros(1)})))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="publisher"):
        rx.receive(update)
    assert time.monotonic() - t0 < 10


# ---- spawned receivers ---------------------------------------------------------------------------


def test_three_publishes_with_a_late_joiner(agents):
    """Bitwise copies with aliases over three publishes; publish() never waits for receivers, not
    even for one that asks 1 s later; once both are members, one collective serves both."""
    a, b = agents[0], agents[1]
    pub = BroadcastPublisher([0, 1], bucket_bytes=BUCKET)
    try:
        a.connect(pub.receiver_spec(0))
        b.connect(pub.receiver_spec(1))
        states = [make_state(s, big=4 << 20) for s in range(3)]  # 16 MiB a publish
        for version, state in enumerate(states):
            update, publish_s = timed_publish(pub, state, version)
            t_published = time.time()
            assert publish_s < 0.05, f"publish took {publish_s:.3f} s"
            a.recv(update)
            b.recv(update, delay_s=1.0 if version == 0 else 0.0)  # b is "still generating"
            for agent in (a, b):
                v, t_ask, t_done, got, groups = agent.result()
                assert v == version
                assert_same(got, state)
                assert groups == [("lm_head.weight", "model.embed_tokens.weight")]
                if version == 0 and agent is b:
                    assert t_ask - t_published > 0.9  # it really joined late, and publish had long returned
        # Records are written once every ack is in, just after the receivers return.
        wait_for(lambda: any(r["seq"] == 2 for r in pub.transmissions), 10, "the record of seq 2")
        recs = list(pub.transmissions)
        # After the first publish both are members: seq 1 and 2 go out once each, to both at once,
        # and seq 2 reuses seq 1's group.
        for seq in (1, 2):
            (rec,) = [r for r in recs if r["seq"] == seq]
            assert rec["workers"] == (0, 1) and rec["ok"]
        (rec2,) = [r for r in recs if r["seq"] == 2]
        assert not rec2["fresh_group"]
        assert publish_s < rec2["seconds"] / 10, (publish_s, rec2["seconds"])
        # seq 0 reached both (a then b late), each copy once.
        assert sorted(w for r in recs if r["seq"] == 0 and r["ok"] for w in r["workers"]) == [0, 1]
    finally:
        pub.close()


def test_killed_receiver_neither_hangs_the_publisher_nor_the_survivor(agents):
    """SIGKILL a receiver between publishes without telling the publisher: the survivor gets the
    next update once the dead one's heartbeat is stale; a restarted worker (fresh id, fresh
    process) joins late with the latest update; a removed worker that asks is refused."""
    a, victim, fresh = agents[0], agents[1], agents[2]
    pub = BroadcastPublisher([0, 1], bucket_bytes=BUCKET, liveness_timeout_s=1.5, heartbeat_s=0.25)
    try:
        a.connect(pub.receiver_spec(0))
        victim.connect(pub.receiver_spec(1))
        s0, s1, s2, s3 = (make_state(10 + i) for i in range(4))
        u0 = pub.publish(s0, 0)
        a.recv(u0)
        victim.recv(u0)
        assert_same(a.result()[3], s0)
        assert_same(victim.result()[3], s0)

        victim.kill()
        u1, publish_s = timed_publish(pub, s1, 1)
        assert publish_s < 0.05
        a.recv(u1)  # the controller sends to the live worker only
        _, t_ask, t_done, got, _ = a.result(timeout_s=15)
        assert_same(got, s1)
        assert t_done - t_ask < 8  # waited out the 1.5 s liveness timeout, not forever
        assert pub._thread.is_alive()

        fresh.connect(pub.receiver_spec(5))  # the restart, under a fresh worker id
        fresh.recv(u1)  # "sent the latest WeightsUpdate again after it reports ready"
        assert_same(fresh.result()[3], s1)

        u2 = pub.publish(s2, 2)
        a.recv(u2)
        fresh.recv(u2)
        assert_same(a.result()[3], s2)
        assert_same(fresh.result()[3], s2)
        wait_for(lambda: any(r["seq"] == 2 for r in pub.transmissions), 10, "the record of seq 2")
        (rec,) = [r for r in pub.transmissions if r["seq"] == 2]
        assert rec["workers"] == (0, 5) and rec["ok"]

        pub.remove_worker(5)  # e.g. the controller retired it, though its process lives on
        u3 = pub.publish(s3, 3)
        a.recv(u3)
        fresh.recv(u3)
        assert_same(a.result()[3], s3)  # not held up by the removed worker
        with pytest.raises(AssertionError, match="removed"):
            fresh.result()
    finally:
        t0 = time.perf_counter()
        pub.close()
        assert time.perf_counter() - t0 < 5


def test_death_in_the_middle_of_a_broadcast_is_recovered(agents):
    """A receiver dies inside the collective: the survivor's copy fails, it asks again and gets a
    re-broadcast in a new group epoch without the dead rank; after the controller's
    remove_worker the next publish goes through at once."""
    a, victim = agents[0], agents[3]
    pub = BroadcastPublisher([0, 1], bucket_bytes=BUCKET)  # default liveness: only remove_worker helps
    try:
        a.connect(pub.receiver_spec(0))
        victim.connect(pub.receiver_spec(1))
        s0, s1, s2 = (make_state(20 + i, big=1 << 18) for i in range(3))
        u0 = pub.publish(s0, 0)
        a.recv(u0)
        victim.recv(u0)
        assert_same(a.result()[3], s0)
        assert_same(victim.result()[3], s0)

        u1 = pub.publish(s1, 1)
        a.recv(u1)
        victim.recv(u1, die_at_bucket=1)
        # Whether the survivor's first copy fails depends on who relays to whom in gloo's tree
        # and on socket buffering; either way it must end with the right bytes, promptly (when
        # its copy failed, through a re-broadcast without the dead rank).
        _, t_ask, t_done, got, _ = a.result(timeout_s=30)
        assert_same(got, s1)
        assert t_done - t_ask < 10

        wait_for(lambda: not victim.proc.is_alive(), 10, "the victim to exit")
        pub.remove_worker(1)  # what the controller does on WorkerLost
        wait_for(lambda: any(r["seq"] == 1 and r["workers"] == (0, 1) for r in pub.transmissions), 10,
                 "the record of the broken broadcast")
        recs = [r for r in pub.transmissions if r["seq"] == 1]
        assert not recs[0]["ok"] and recs[0]["workers"] == (0, 1) and 1 in recs[0]["failed"]
        assert all(r["workers"] == (0,) and r["ok"] and r["epoch"] > recs[0]["epoch"] for r in recs[1:])
        u2 = pub.publish(s2, 2)
        a.recv(u2)
        _, t_ask, t_done, got, _ = a.result(timeout_s=15)
        assert_same(got, s2)
        assert t_done - t_ask < 5
    finally:
        pub.close()


# ---- GPU -----------------------------------------------------------------------------------------


def _thread_round_trip(pub: BroadcastPublisher, devices: list[str], state: dict[str, torch.Tensor]):
    rxs = [BroadcastReceiver(pub.receiver_spec(w, device=d)) for w, d in enumerate(devices)]
    update = pub.publish(state, 0)
    out: dict[int, dict] = {}
    errors: queue.Queue = queue.Queue()

    def run(w):
        try:
            out[w] = rxs[w].receive(update)
        except Exception as e:
            errors.put(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors.empty(), errors.get()
    for w, d in enumerate(devices):
        got = {k: v.cpu() for k, v in out[w].items()}
        assert out[w]["big"].device.type == torch.device(d).type
        assert_same(got, {k: v.cpu() for k, v in state.items()})
        assert out[w]["lm_head.weight"] is out[w]["model.embed_tokens.weight"]


def _form_and_stall(port: int, epoch: int, timeout_s: float) -> None:
    from asyncrl.runtime.broadcast import _make_group
    from datetime import timedelta

    store = torch.distributed.TCPStore("127.0.0.1", port, None, False, timedelta(seconds=timeout_s))
    _make_group(store, epoch, 1, 2, "gloo", "127.0.0.1", timeout_s)
    time.sleep(60)


def test_a_peer_killed_during_group_formation_holds_it_at_most_timeout_s():
    # Gloo waits 5x its timeout for a pair that posted its address but never connected: with
    # timeout_s handed to gloo as is, formation hung 5 * timeout_s (the publisher thread of a CI run
    # stalled for > 600 s). The peer is killed at random moments of formation, a few of which hit
    # that window (measured: 3 of 80 at 0-25 ms; without the fix this test failed 2 of 3 runs);
    # each formation must end within timeout_s.
    from asyncrl.runtime.broadcast import _make_group
    from datetime import timedelta

    timeout_s = 1.0
    store = torch.distributed.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=timeout_s))
    ctx = mp.get_context("fork")
    rng = np.random.default_rng(0)
    worst = 0.0
    for epoch in range(100):
        p = ctx.Process(target=_form_and_stall, args=(store.port, epoch, timeout_s), daemon=True)
        p.start()
        killer = threading.Timer(float(rng.uniform(0.0, 0.025)), os.kill, (p.pid, signal.SIGKILL))
        killer.start()
        t0 = time.monotonic()
        try:
            _make_group(store, epoch, 0, 2, "gloo", "127.0.0.1", timeout_s)
        except Exception:  # a dead peer: any error is fine, a long wait is not
            pass
        worst = max(worst, time.monotonic() - t0)
        killer.join()
        p.join(10)
    assert worst < timeout_s + 0.75, worst


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gloo_with_cuda_buffers():
    """One GPU suffices: gloo stages CUDA buckets through host memory."""
    pub = BroadcastPublisher([0, 1], backend="gloo", device="cuda", bucket_bytes=BUCKET)
    try:
        _thread_round_trip(pub, ["cuda", "cpu"], make_state(30))
    finally:
        pub.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="NCCL needs its ranks on distinct GPUs: two CUDA devices")
def test_nccl_broadcast_between_two_gpus():
    pub = BroadcastPublisher([0], device="cuda:0", bucket_bytes=BUCKET)
    try:
        assert pub.backend == "nccl"
        _thread_round_trip(pub, ["cuda:1"], make_state(31))
    finally:
        pub.close()
