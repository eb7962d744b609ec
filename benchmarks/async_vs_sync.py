"""Benchmark: the same job synchronous (max_lag 0) vs asynchronous, with 1 or 2 generators.

Same task, model, seed and sample budget (``steps`` x ``prompts_per_step`` x ``samples_per_prompt``)
in every mode; only the asynchrony changes. Each seed runs every mode back to back (sync, async,
async-2gen, then the next seed) so machine noise hits all modes alike. Reports per mode, as
median (min-max) over seeds: training wall-clock to a target greedy accuracy (evaluation time
excluded), wall-clock for the whole budget, final accuracy, and where the time went (generator busy
= sampling + scoring, learner busy, learner waiting for data). Writes ``results.json`` and
``async_vs_sync.png`` into --out.

    python benchmarks/async_vs_sync.py --out runs/bench-async --repeats 3 --target 0.5
    python benchmarks/async_vs_sync.py --modes async,async-thread -- --steps 300   # extra train flags after --
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, read_jsonl, run_train, spread, time_to_target, write_json  # noqa: E402

MODES = {
    "sync": ["--max-lag", "0"],  # workers auto -> inline: ordinary synchronous training in one thread
    "async": ["--max-lag", "2"],  # one generator process beside the learner
    "async-2gen": ["--max-lag", "2", "--num-generators", "2"],
    "async-lag4": ["--max-lag", "4"],
    "sync-process": ["--max-lag", "0", "--workers", "process"],
    "async-thread": ["--max-lag", "2", "--workers", "thread"],
    "sync-thread": ["--max-lag", "0", "--workers", "thread"],
    # The seeds' setting: each role owns its resources in both modes (one core each here), so
    # synchronous training leaves one core idle while the other role works.
    "sync-dedicated": ["--max-lag", "0", "--workers", "process", "--learner-threads", "1", "--generator-threads", "1"],
    "async-dedicated": ["--max-lag", "2", "--workers", "process", "--learner-threads", "1",
                        "--generator-threads", "1"],
}
# The synchronous mode each asynchronous mode is compared with (default: "sync", all cores).
BASELINE = {"async-dedicated": "sync-dedicated"}


def plot(runs: dict[str, list[dict]], out: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (mode, rows) in enumerate(runs.items()):
        for j, r in enumerate(rows):
            ev = read_jsonl(Path(r["run"]) / "eval.jsonl")
            ax.plot([e["wall_time_s"] for e in ev], [e["accuracy"] for e in ev], color=colors[i % len(colors)],
                    alpha=0.8, lw=1.2, label=mode if j == 0 else None)
    ax.axhline(target, color="grey", ls=":", lw=1)
    ax.set_xlabel("training wall-clock, s (evaluation excluded)")
    ax.set_ylabel("greedy accuracy (200 eval prompts)")
    ax.set_title("accuracy vs wall-clock, one line per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    names = list(runs)
    med = {k: [statistics.median(r[k] for r in runs[m]) for m in names]
           for k in ("gen_time_s", "train_time_s", "wait_time_s", "wall_time_s")}
    x = range(len(names))
    w = 0.27
    bx.bar([i - w for i in x], med["wall_time_s"], w, label="wall-clock", color="black", alpha=0.7)
    bx.bar(list(x), med["gen_time_s"], w, label="generator busy", color=colors[0])
    bx.bar([i + w for i in x], med["train_time_s"], w, label="learner busy", color=colors[1])
    bx.bar([i + w for i in x], med["wait_time_s"], w, bottom=med["train_time_s"], label="learner waiting",
           color=colors[1], alpha=0.35)
    bx.set_xticks(list(x), names, fontsize=8)
    bx.set_ylabel("seconds (median over seeds)")
    bx.set_title("time split")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-async-vs-sync")
    ap.add_argument("--modes", default="sync,async,async-2gen", help=f"comma list of {','.join(MODES)}")
    ap.add_argument("--repeats", type=int, default=3, help="seeds 0..repeats-1")
    ap.add_argument("--target", type=float, default=0.50, help="greedy accuracy to time")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more asyncrl train flags for every mode")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for seed in range(args.repeats):
        for mode in modes:
            run = out / f"{mode}-r{seed}"
            s = run_train(run, ["--seed", str(seed), "--eval-every", str(args.eval_every), *MODES[mode], *extra])
            staleness = [r["staleness_mean"] for r in read_jsonl(run / "metrics.jsonl")]
            runs[mode].append({
                "seed": seed,
                "run": str(run),
                "wall_time_s": s["wall_time_s"],
                "time_to_target_s": time_to_target(run, args.target),
                "final_accuracy": s["final_accuracy"],
                "gen_time_s": s["gen_time_s"] + s["score_time_s"],  # generator busy: sampling + scoring
                "train_time_s": s["train_time_s"],
                "wait_time_s": s["wait_time_s"],
                "sync_time_s": s["sync_time_s"],
                "staleness_mean": sum(staleness) / len(staleness),
            })
    keys = ("time_to_target_s", "wall_time_s", "final_accuracy", "gen_time_s", "train_time_s", "wait_time_s",
            "staleness_mean")
    table = {m: {k: spread(r[k] for r in rows) for k in keys} for m, rows in runs.items()}
    ratios = {}
    for m in modes:
        base = BASELINE.get(m, "sync")
        if m.startswith("sync") or base not in runs:
            continue
        pairs = list(zip(runs[base], runs[m]))
        ratios[m] = {
            "baseline": base,
            "wall": [s["wall_time_s"] / a["wall_time_s"] for s, a in pairs],
            "time_to_target": [s["time_to_target_s"] / a["time_to_target_s"] for s, a in pairs
                               if s["time_to_target_s"] and a["time_to_target_s"]],
            # Perfect overlap of the baseline's two roles: (Tg + Tt) / max(Tg, Tt).
            "overlap_bound": [(s["gen_time_s"] + s["train_time_s"]) / max(s["gen_time_s"], s["train_time_s"])
                              for s, _ in pairs],
        }
    write_json(out / "results.json", {"target": args.target, "extra": extra, "machine": machine(), "table": table,
                                      "sync_over_mode_ratios": ratios, "runs": runs})
    plot(runs, out / "async_vs_sync.png", args.target)

    print(f"\ntarget accuracy {args.target}; median (min-max) over {args.repeats} seeds")
    print(f"{'mode':12} {'time to target s':>22} {'wall s':>22} {'final acc':>20} {'gen busy s':>11} "
          f"{'learn busy s':>12} {'learn wait s':>12} {'stale':>6}")
    for m, t in table.items():
        print(f"{m:12} {fmt(t['time_to_target_s']):>22} {fmt(t['wall_time_s']):>22} "
              f"{fmt(t['final_accuracy'], 3):>20} {t['gen_time_s']['median']:11.1f} "
              f"{t['train_time_s']['median']:12.1f} {t['wait_time_s']['median']:12.1f} "
              f"{t['staleness_mean']['median']:6.2f}  reached {t['time_to_target_s']['n']}/{len(runs[m])}")
    for m, r in ratios.items():
        base = r["baseline"]
        print(f"{base}/{m} wall-clock ratio per seed: {', '.join(f'{x:.2f}' for x in r['wall'])}; "
              f"time-to-target: {', '.join(f'{x:.2f}' for x in r['time_to_target']) or 'n/a'}")
        # Overlapped, a run is no faster than its busiest role as it runs *under overlap* (on a CPU
        # each role gets fewer threads than in its synchronous turn): that bounds the ratio.
        bound = [s["wall_time_s"] / max(a["train_time_s"], a["gen_time_s"]) for s, a in zip(runs[base], runs[m])]
        print(f"  bound ({base} wall / {m} busiest role): {', '.join(f'{b:.2f}' for b in bound)}")
        print(f"  overlap bound of {base}'s roles (Tg+Tt)/max(Tg,Tt): "
              f"{', '.join(f'{b:.2f}' for b in r['overlap_bound'])}")
    print(f"\nwrote {out / 'results.json'} and {out / 'async_vs_sync.png'}")


if __name__ == "__main__":
    main()
