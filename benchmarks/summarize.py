"""Re-read a benchmark folder written by async_vs_sync.py and print time-to-target at several
accuracy targets (median and range over seeds), from the runs' eval.jsonl files.

    python benchmarks/summarize.py runs/bench-default --targets 0.45,0.5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import first_reach, fmt, spread  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_dir")
    ap.add_argument("--targets", default="0.45,0.5")
    args = ap.parse_args()
    root = Path(args.bench_dir)
    modes: dict[str, list[Path]] = {}
    for run in sorted(p for p in root.iterdir() if (p / "summary.json").is_file()):
        modes.setdefault(run.name.rsplit("-r", 1)[0], []).append(run)
    for target in [float(t) for t in args.targets.split(",")]:
        print(f"target accuracy {target}:")
        for mode, runs in modes.items():
            hits = [h for h in (first_reach(r, target) for r in runs) if h]
            if hits:
                print(f"  {mode:14} reached {len(hits)}/{len(runs)}  wall s {fmt(spread(h[1] for h in hits))}  "
                      f"steps median {statistics.median(h[0] for h in hits):.0f}")
            else:
                print(f"  {mode:14} reached 0/{len(runs)}")
    print("final accuracy / wall s / gen busy s / learner busy s / learner wait s (median over seeds):")
    for mode, runs in modes.items():
        s = [json.loads((r / "summary.json").read_text()) for r in runs]
        med = lambda k: statistics.median(x[k] for x in s)  # noqa: E731
        print(f"  {mode:14} acc {med('final_accuracy'):.3f} (min {min(x['final_accuracy'] for x in s):.3f}, "
              f"max {max(x['final_accuracy'] for x in s):.3f})  wall {med('wall_time_s'):6.1f} "
              f"(min {min(x['wall_time_s'] for x in s):.1f}, max {max(x['wall_time_s'] for x in s):.1f})  "
              f"gen {med('gen_time_s') + med('score_time_s'):6.1f}  learn {med('train_time_s'):6.1f}  "
              f"wait {med('wait_time_s'):6.1f}")


if __name__ == "__main__":
    main()
