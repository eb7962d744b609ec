"""Benchmark: the same job synchronous (max_lag 0) vs asynchronous, run side by side.

Runs each mode ``--repeats`` times, interleaved (sync, async, sync, async, ...) so machine noise
hits both alike, and prints per mode: wall-clock to a target greedy accuracy, final accuracy, and
where the time went (generator busy time, learner busy time, learner waiting for data). Extra
modes compare worker hosting (threads vs processes). Writes ``results.json`` into --out.

    python benchmarks/async_vs_sync.py --out runs/bench-async --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

MODES = {
    "sync": ["--max-lag", "0"],  # workers auto -> inline: ordinary synchronous training in one thread
    "sync-process": ["--max-lag", "0", "--workers", "process"],
    "async": [],  # the default job: max_lag from the config default
    "async-thread": ["--workers", "thread"],
    "sync-thread": ["--max-lag", "0", "--workers", "thread"],
}


def time_to_target(run: Path, target: float) -> float | None:
    for line in (run / "eval.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["accuracy"] >= target:
            return row["wall_time_s"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-async-vs-sync")
    ap.add_argument("--modes", default="sync,async", help=f"comma list of {','.join(MODES)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.40, help="greedy accuracy to time")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more asyncrl train flags")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        for mode in modes:
            run = out / f"{mode}-r{rep}"
            cmd = [sys.executable, "-m", "asyncrl.cli", "train", "--output-dir", str(run), "--seed", str(rep),
                   "--eval-every", str(args.eval_every), *MODES[mode], *extra]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={"CI": "1", **__import__("os").environ})
            s = json.loads((run / "summary.json").read_text())
            results[mode].append({
                "seed": rep,
                "wall_time_s": s["wall_time_s"],
                "time_to_target_s": time_to_target(run, args.target),
                "final_accuracy": s["final_accuracy"],
                "gen_time_s": s["gen_time_s"] + s["score_time_s"],  # generator busy: sampling + scoring
                "train_time_s": s["train_time_s"],
                "wait_time_s": s["wait_time_s"],
                "sync_time_s": s["sync_time_s"],
            })
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"target": args.target, "extra": extra, "runs": results}, indent=2))

    def fmt(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "n/a"
        return f"{statistics.median(vals):7.1f} (min {min(vals):.1f}, max {max(vals):.1f})"

    print(f"\ntarget accuracy {args.target}; median (min, max) over {args.repeats} seeds")
    print(f"{'mode':14} {'time to target s':>30} {'wall s':>30} {'final acc':>10} {'gen busy s':>11} "
          f"{'learn busy s':>12} {'learn wait s':>12}")
    for m, rows in results.items():
        reached = sum(r["time_to_target_s"] is not None for r in rows)
        print(f"{m:14} {fmt([r['time_to_target_s'] for r in rows]):>30} {fmt([r['wall_time_s'] for r in rows]):>30} "
              f"{statistics.median(r['final_accuracy'] for r in rows):10.3f} "
              f"{statistics.median(r['gen_time_s'] for r in rows):11.1f} "
              f"{statistics.median(r['train_time_s'] for r in rows):12.1f} "
              f"{statistics.median(r['wait_time_s'] for r in rows):12.1f}  reached {reached}/{len(rows)}")
    if "sync" in results and "async" in results:
        ratios = [s["wall_time_s"] / a["wall_time_s"] for s, a in zip(results["sync"], results["async"])]
        print(f"\nsync/async wall-clock ratio per seed: {', '.join(f'{r:.2f}' for r in ratios)}")
        # Overlapped, the run can be no faster than its busiest role as it runs *under overlap* (on a
        # CPU each role gets fewer threads than it had in its synchronous turn): that bounds the ratio.
        bound = [s["wall_time_s"] / max(a["train_time_s"], a["gen_time_s"])
                 for s, a in zip(results["sync"], results["async"])]
        print(f"bound: sync wall / async busiest-role time, per seed: {', '.join(f'{b:.2f}' for b in bound)}")
        tt = [(s["time_to_target_s"], a["time_to_target_s"]) for s, a in zip(results["sync"], results["async"])]
        tt = [s / a for s, a in tt if s and a]
        if tt:
            print(f"sync/async time-to-target ratio per seed: {', '.join(f'{r:.2f}' for r in tt)}")


if __name__ == "__main__":
    main()
