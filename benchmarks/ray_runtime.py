"""Benchmark: the Ray runtime against the local one, and generator scaling on simulated nodes.

``--part overhead``: the same asynchronous job (default ``arithmetic`` job, one generator,
``max_lag`` 2) with ``--runtime local --workers process`` and with ``--runtime ray`` (a local Ray
started by the run), seeds interleaved. Reports training wall-clock (evaluation excluded), set-up
time, and the Ray overhead per learner step = (wall ray - wall local) / steps.

``--part scaling``: the TBA searcher-scaling experiment at our scale. A ``ray.cluster_utils.Cluster``
with a head node (the learner: driver) and two simulated worker nodes, each declaring
``--node-cpus`` logical CPUs and a ``gen_node`` resource, all on this machine; ``asyncrl train
--runtime ray --ray-address <cluster>`` with 1, 2 and 4 generators spread over the worker nodes
(``--placement-strategy SPREAD --generator-resources gen_node=1``), ``--buffer tba``, the same
learner steps. Reports samples generated per second, the learner's idle fraction (waiting for
data / wall-clock), mean staleness, and final greedy accuracy at equal learner steps. The
simulated nodes share this machine's cores: on 2 cores, more generators cannot add compute, so
the figures show the runtime's behaviour (placement, staleness, idle time), not a speed-up a real
cluster would give.

    python benchmarks/ray_runtime.py --part overhead --out runs/bench-ray-overhead --repeats 2 -- --steps 300
    python benchmarks/ray_runtime.py --part scaling --out runs/bench-ray-scaling --generators 1,2,4 -- --steps 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, read_jsonl, run_train, simulated_cluster, spread, write_json  # noqa: E402

ASYNC = ["--max-lag", "2", "--eval-every", "0"]


def overhead(args, extra: list[str], out: Path) -> dict:
    modes = {"local": ["--runtime", "local", "--workers", "process"], "ray": ["--runtime", "ray"]}
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for seed in range(args.repeats):
        for m, flags in modes.items():
            run = out / f"{m}-r{seed}"
            s = run_train(run, ["--seed", str(seed), *ASYNC, *flags, *extra])
            runs[m].append({"seed": seed, "wall_time_s": s["wall_time_s"], "setup_time_s": s["setup_time_s"],
                            "steps": s["steps"], "final_accuracy": s["final_accuracy"],
                            "wait_time_s": s["wait_time_s"]})
    per_step_ms = [1000 * (r["wall_time_s"] - lo["wall_time_s"]) / r["steps"] for lo, r in zip(runs["local"], runs["ray"])]
    table = {m: {k: spread(r[k] for r in rows) for k in ("wall_time_s", "setup_time_s", "final_accuracy",
                                                          "wait_time_s")} for m, rows in runs.items()}
    print(f"\nmedian (min-max) over {args.repeats} seeds")
    for m, t in table.items():
        print(f"{m:6} wall {fmt(t['wall_time_s']):>20} s  setup {fmt(t['setup_time_s']):>16} s  "
              f"learner wait {fmt(t['wait_time_s']):>16} s  final acc {fmt(t['final_accuracy'], 3)}")
    print(f"ray overhead per learner step (ms), per seed: {', '.join(f'{x:.1f}' for x in per_step_ms)}")
    return {"table": table, "ray_overhead_ms_per_step": per_step_ms, "runs": runs}


def scaling(args, extra: list[str], out: Path) -> dict:
    import ray

    cluster = simulated_cluster(args.node_cpus)
    rows = []
    try:
        for g in (int(x) for x in args.generators.split(",")):
            run = out / f"gen{g}"
            s = run_train(run, ["--runtime", "ray", "--ray-address", cluster.address, "--num-generators", str(g),
                                "--buffer", "tba", "--max-lag", str(args.max_lag), "--placement-strategy", "SPREAD",
                                "--generator-resources", "gen_node=1", "--generator-threads", "1",
                                "--learner-threads", "1", "--eval-every", "0", *extra])
            m = read_jsonl(run / "metrics.jsonl")
            acc = s["accounting"]
            row = {"generators": g, "steps": s["steps"], "wall_time_s": s["wall_time_s"],
                   "samples_generated": acc["samples_generated"],
                   "samples_per_s": acc["samples_generated"] / s["wall_time_s"],
                   "learner_idle_fraction": s["wait_time_s"] / s["wall_time_s"],
                   "staleness_mean": sum(r["staleness_mean"] for r in m) / len(m),
                   "final_accuracy": s["final_accuracy"]}
            rows.append(row)
            print(f"{g} generator(s): {row['samples_per_s']:.0f} samples/s, learner idle "
                  f"{row['learner_idle_fraction']:.2f}, staleness {row['staleness_mean']:.2f}, "
                  f"final accuracy {row['final_accuracy']:.3f} after {row['steps']} steps "
                  f"(wall {row['wall_time_s']:.1f} s)", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"node_cpus": args.node_cpus, "max_lag": args.max_lag, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("overhead", "scaling"), required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=2, help="overhead: seeds 0..repeats-1")
    ap.add_argument("--generators", default="1,2,4", help="scaling: generator counts")
    ap.add_argument("--node-cpus", type=int, default=4, help="scaling: logical CPUs per simulated node")
    ap.add_argument("--max-lag", type=int, default=4, help="scaling: max_lag of every run")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more asyncrl train flags")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out or f"runs/bench-ray-{args.part}")
    res = overhead(args, extra, out) if args.part == "overhead" else scaling(args, extra, out)
    write_json(out / "results.json", {"part": args.part, "extra": extra, "machine": machine(), **res})
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
