"""Benchmark: the same ``asyncrl train`` job on an earlier revision and on this checkout.

Checks that a change does not slow a job down. The earlier revision is checked out with
``git worktree`` under --out and imported through ``PYTHONPATH`` (it wins over this checkout's
editable install), so both run in the same virtual environment. Each seed runs before, then
after, back to back, so machine noise hits both alike. Reports training wall-clock
(``summary.json`` ``wall_time_s``: evaluation excluded), final accuracy, and the per-seed ratio
after / before (below 1 = faster now).

    python benchmarks/before_after.py --before dcea170 --out runs/bench-regression --repeats 3
    python benchmarks/before_after.py --before HEAD~1 -- --steps 300     # more train flags after --
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, fmt, machine, run_once, spread, train_cmd, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision to compare against")
    ap.add_argument("--out", default="runs/bench-before-after")
    ap.add_argument("--repeats", type=int, default=3, help="seeds 0..repeats-1")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: asyncrl train flags for both")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out).resolve()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = out / f"src-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True)
    srcs = {"before": tree / "src", "after": ROOT / "src"}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for seed in range(args.repeats):
        for name, src in srcs.items():
            run = out / f"{name}-r{seed}"
            s = run_once(run, train_cmd(run, ["--seed", str(seed), *extra]), env={"PYTHONPATH": str(src)})
            runs[name].append({"seed": seed, "run": str(run), "wall_time_s": s["wall_time_s"],
                               "final_accuracy": s["final_accuracy"], "steps": s["steps"]})
    ratios = [a["wall_time_s"] / b["wall_time_s"] for b, a in zip(runs["before"], runs["after"])]
    table = {n: {k: spread(r[k] for r in rows) for k in ("wall_time_s", "final_accuracy")} for n, rows in runs.items()}
    write_json(out / "results.json", {"before": rev, "extra": extra, "machine": machine(), "table": table,
                                      "after_over_before": ratios, "runs": runs})
    print(f"\nbefore = {rev}, after = this checkout; median (min-max) over {args.repeats} seeds")
    for n, t in table.items():
        print(f"{n:7} wall {fmt(t['wall_time_s']):>22} s   final accuracy {fmt(t['final_accuracy'], 3)}")
    print(f"after/before wall-clock per seed: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"wrote {out / 'results.json'} (remove the worktree with: git worktree remove {tree})")


if __name__ == "__main__":
    main()
