"""Benchmark: weight publish time against model size and number of generators, for the process
queue (``weight_transport: queue``) and the Ray object store (``object_store``).

Uses the runtime's own transport classes: the learner side publishes a ``Learner.weights()``
snapshot with the transport's publisher and sends the ``WeightsUpdate`` to N receivers; each
receiver turns it into a state dict with the transport's receiver and loads it into its own
engine (``HFEngine.load_weights``), then acknowledges. Per publish it reports:

- ``snapshot_s``: ``Learner.weights()`` (the part that blocks the learner in every transport);
- ``publish_s``: ``publisher.publish`` after the snapshot: what else the learner waits for
  (the object store's ``ray.put`` runs in a background thread; the sends follow);
- ``all_loaded_s``: from the start of the publish (snapshot included) until all N receivers have
  loaded, the time until every generator samples with the new weights.

Queue receivers are spawned processes fed by ``torch.multiprocessing`` queues (as ``workers:
process``); object-store receivers are Ray actors on a local Ray started by the script (as
``runtime: ray``). Model sizes are random-init Llamas of ``throughput.py`` (1M-135M, tied
embeddings, fp32). The first publish at every setting is a warm-up.

    python benchmarks/weight_sync.py --out runs/bench-weight-sync --sizes 1M,10M,35M,135M --generators 1,2,4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, spread, write_json  # noqa: E402
from throughput import SIZES, build_engine, build_llama  # noqa: E402

CPU = torch.device("cpu")


def queue_receiver(spec, inbox, outbox) -> None:
    """A process receiver, as ``workers: process`` runs one (one torch thread: the machine is shared)."""
    from asyncrl.runtime.transports import make_receiver

    torch.set_num_threads(1)
    engine = build_engine(build_llama(spec))
    receiver = make_receiver("queue")
    outbox.put("ready")
    while True:
        update = inbox.get()
        if update is None:
            return
        engine.load_weights(receiver.receive(update), update.version)
        del update
        outbox.put("loaded")


def make_ray_receiver_cls():
    import ray

    @ray.remote(num_cpus=0)
    class Receiver:
        def __init__(self, spec):
            from asyncrl.runtime.transports import make_receiver

            torch.set_num_threads(1)
            self.engine = build_engine(build_llama(spec))
            self.receiver = make_receiver("object_store")

        def load(self, update) -> str:
            self.engine.load_weights(self.receiver.receive(update), update.version)
            return "loaded"

    return Receiver


def timed_publishes(learner, publisher, send, wait, repeats: int) -> list[dict]:
    """``repeats`` timed publishes after one warm-up: snapshot, ``publisher.publish`` (timed alone:
    the learner's part), ``send(update)`` to every receiver, then ``wait(what send returned)`` until
    all have loaded."""
    rows = []
    for version in range(repeats + 1):
        t0 = time.perf_counter()
        state = learner.weights()
        t1 = time.perf_counter()
        update = publisher.publish(state, version)
        t2 = time.perf_counter()
        sent = send(update)
        wait(sent)
        t3 = time.perf_counter()
        del state, update, sent
        if version:  # the first publish is a warm-up
            rows.append({"snapshot_s": t1 - t0, "publish_s": t2 - t1, "all_loaded_s": t3 - t0})
    return rows


def bench_queue(spec, n: int, learner, repeats: int) -> list[dict]:
    import torch.multiprocessing as mp

    from asyncrl.runtime.transports import make_publisher

    ctx = mp.get_context("spawn")
    outbox = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(n)]
    procs = [ctx.Process(target=queue_receiver, args=(spec, q, outbox), daemon=True) for q in inboxes]
    for p in procs:
        p.start()
    for _ in procs:
        assert outbox.get(timeout=600) == "ready"
    def send(update):
        for q in inboxes:
            q.put(update)

    def wait(_):
        for _ in procs:
            assert outbox.get(timeout=600) == "loaded"

    try:
        return timed_publishes(learner, make_publisher("queue"), send, wait, repeats)
    finally:
        for q in inboxes:
            q.put(None)
        for p in procs:
            p.join(10)


def bench_object_store(spec, n: int, learner, repeats: int) -> list[dict]:
    import ray

    from asyncrl.runtime.transports import make_publisher

    from asyncrl.runtime.ray_host import resolved

    Receiver = make_ray_receiver_cls()
    actors = [Receiver.remote(spec) for _ in range(n)]
    ray.get([a.__ray_ready__.remote() for a in actors])

    def wait(refs):
        assert ray.get(refs, timeout=600) == ["loaded"] * n

    pub = make_publisher("object_store")
    try:
        # the host's part: once the put is done, one actor call per generator
        return timed_publishes(learner, pub, lambda update: [a.load.remote(resolved(update)) for a in actors], wait,
                               repeats)
    finally:
        pub.close()
        for a in actors:
            ray.kill(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-weight-sync")
    ap.add_argument("--sizes", default="1M,10M,35M,135M")
    ap.add_argument("--generators", default="1,2,4")
    ap.add_argument("--transports", default="queue,object_store")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="learner torch threads (snapshot)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from asyncrl.config import Config
    from asyncrl.learner import Learner
    from asyncrl.runtime.transport import distinct_bytes

    transports = args.transports.split(",")
    started_ray = False
    if "object_store" in transports:
        import ray

        if not ray.is_initialized():
            # Logical CPUs only: the receivers reserve none, so 4 fit on a 2-core machine.
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            started_ray = True
    results = []
    try:
        for size in args.sizes.split(","):
            spec = SIZES[size]
            torch.manual_seed(0)
            learner = Learner(Config(), build_llama(spec), None, 0, CPU)
            state = learner.weights()
            mb = distinct_bytes(state) / 1e6
            state_dict_mb = sum(v.numel() * v.element_size() for v in learner.model.state_dict().values()) / 1e6
            del state
            for n in (int(x) for x in args.generators.split(",")):
                for tr in transports:
                    fn = bench_queue if tr == "queue" else bench_object_store
                    reps = fn(spec, n, learner, args.repeats)
                    row = {"size": size, "mb": mb, "state_dict_mb": state_dict_mb, "generators": n,
                           "transport": tr, **{k: spread(r[k] for r in reps) for k in reps[0]}}
                    results.append(row)
                    print(f"{size:>5} ({mb:6.1f} MB sent, state_dict {state_dict_mb:6.1f} MB) x{n} {tr:12} "
                          f"snapshot {fmt(row['snapshot_s'], 3)} s, publish {fmt(row['publish_s'], 4)} s, "
                          f"all loaded {fmt(row['all_loaded_s'], 3)} s", flush=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    write_json(Path(args.out) / "results.json", {"machine": machine(), "repeats": args.repeats, "rows": results})
    print(f"wrote {Path(args.out) / 'results.json'}")


if __name__ == "__main__":
    main()
