"""Benchmark: how each loss tolerates off-policy data (the seeds' central experiment).

Every loss is trained on ``arithmetic`` at each ``max_lag`` with ``workers: inline``: the generator
runs in the learner's thread, ``max_lag`` requests ahead, so after the first ``max_lag`` steps every
batch is trained exactly ``max_lag`` updates after the weights that sampled it (a simulated lag,
deterministic for a seed, as in Noukhovitch et al.'s off-policy experiment). ``max_lag 0`` is
ordinary synchronous on-policy training. The grid is loss variant x learning rate x lag x seed:
the variants include ``grpo`` and ``ppo`` with each off-policy correction, decoupled PPO and
dual-clip (``--losses``; ``--list`` prints them). Per run we record the final greedy accuracy on
the eval prompts, the KL(pi || ref) of the final policy to the initial one, estimated by sampling
(``evaluation.sampled_kl``: ``--kl-samples`` samples per eval prompt, sequence-summed log-ratio),
and the time to a target accuracy (first evaluation, every ``--eval-every`` steps, reaching
``--target``: training wall-clock with evaluation excluded, and the step).

Writes ``results.json``, ``offpolicy.png`` (one row of panels per learning rate) and prints the
tables (median, min-max over seeds). ``--dry-run`` prints the grid and an estimated duration from
a short calibration run per variant (``--calibrate-steps``), and trains nothing else.

    python benchmarks/offpolicy_sweep.py --out runs/bench-offpolicy --seeds 3 --steps 200 --parallel 2
    python benchmarks/offpolicy_sweep.py --dry-run --losses grpo,ppo,grpo-token_mask --lrs 5e-5,5e-4
    python benchmarks/offpolicy_sweep.py --report A/results.json B/results.json --report-png docs/img/x.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import first_reach, fmt, machine, read_jsonl, run_many, spread, write_json  # noqa: E402

LOSSES = {
    "tb": ["--loss", "tb"],
    "online_dpo": ["--loss", "online_dpo"],
    "rloo": ["--loss", "rloo"],
    "ppo": ["--loss", "ppo"],
    "grpo": ["--loss", "grpo"],
    "dr_grpo": ["--loss", "grpo", "--variant", "dr_grpo"],
    # grpo's default is token_tis (is_cap 2); the other corrections of losses/corrections.py
    **{f"grpo-{c}": ["--loss", "grpo", "--off-policy-correction", c]
       for c in ("none", "token_mask", "sequence_tis", "sequence_mask", "geometric_mask")},
    # plain ppo's ratio divides by the behaviour policy: only the masks apply
    **{f"ppo-{c}": ["--loss", "ppo", "--off-policy-correction", c]
       for c in ("token_mask", "sequence_mask", "geometric_mask")},
    "ppo-dual_clip": ["--loss", "ppo", "--clip-ratio-c", "3"],
    # sync_every 1 (exact lags): the proximal policy is the current weights, so decoupled ppo is
    # the truncated-IS policy gradient min(pi/pi_behaviour, is_cap) with GAE (docs/algorithms.md)
    "ppo-decoupled": ["--loss", "ppo", "--decoupled", "true"],
}


def final_kl(run: Path, samples_per_prompt: int) -> float:
    import torch
    import yaml

    from asyncrl.checkpoint import find_checkpoint
    from asyncrl.config import Config
    from asyncrl.evaluation import sampled_kl
    from asyncrl.policy import load_model, load_tokenizer, resolve_model_path
    from asyncrl.tasks import make_task

    cfg = Config(**yaml.safe_load((run / "config.yaml").read_text()))
    torch.manual_seed(cfg.seed)
    dev = torch.device("cpu")
    ckpt = find_checkpoint(run)
    pi, ref = load_model(str(ckpt), dev), load_model(resolve_model_path(cfg.model, cfg.task.name), dev)
    prompts = [p.text for p in make_task(cfg).eval_prompts()]
    return sampled_kl(pi, ref, load_tokenizer(str(ckpt)), prompts, samples_per_prompt=samples_per_prompt,
                      max_new_tokens=cfg.sampling.max_new_tokens, chat_template=cfg.chat_template)


def plot(results: dict, lags: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = results["lrs"]
    keys = (("final_accuracy", "final greedy accuracy"), ("kl_ref", "KL(pi || ref), sampled, nats/seq"),
            ("time_to_target_s", f"training s to accuracy {results['target']}"))
    fig, axes = plt.subplots(len(lrs), len(keys), figsize=(15, 4.0 * len(lrs)), squeeze=False)
    x = list(range(len(lags)))
    for row, lr in zip(axes, lrs):
        for loss, by_lag in results["table"][str(lr)].items():
            for ax, (key, _) in zip(row, keys):
                cells = [by_lag[str(l)][key] for l in lags]
                pts = [(i, c) for i, c in zip(x, cells) if c["median"] is not None]
                if not pts:
                    continue
                xs, cs = zip(*pts)
                med = [c["median"] for c in cs]
                ax.errorbar(xs, med, yerr=[[m - c["min"] for m, c in zip(med, cs)],
                                           [c["max"] - m for m, c in zip(med, cs)]],
                            marker="o", capsize=3, label=loss)
        base = results.get("base_accuracy")
        if base is not None:
            row[0].axhline(base, color="grey", ls=":", label="initial policy")
        for ax, (_, title) in zip(row, keys):
            ax.set_xticks(x, [str(l) for l in lags])
            ax.set_xlabel("max_lag (learner updates between sampling and training)")
            ax.set_title(f"{title}, lr {lr}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle(f"off-policy robustness on arithmetic: {results['steps']} steps, median and range over "
                 f"{results['seeds']} seeds (time to target: seeds that reached it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(paths: list[str], png: str | None) -> None:
    """``--report``: merge the ``results.json`` of earlier sweeps (same lags) and print Markdown
    tables per learning rate (final accuracy, sampled KL, steps to the target with the number of
    seeds reaching it); with ``--report-png`` also one plot of accuracy and KL vs lag. Trains nothing.
    Steps to target, not seconds: the runs are inline (no overlap), so steps are what a lag costs,
    and they do not depend on what else the machine was doing."""
    import json

    parts = [json.loads(Path(p).read_text()) for p in paths]
    lags = parts[0]["lags"]
    if any(r["lags"] != lags for r in parts):
        raise SystemExit("--report: the sweeps must share their lags")
    target, base = parts[0]["target"], parts[0]["base_accuracy"]
    cells: dict = {}  # lr -> variant -> lag -> table cell
    for r in parts:
        for lr, by_loss in r["table"].items():
            for loss, by_lag in by_loss.items():
                cells.setdefault(float(lr), {})[loss] = by_lag
    for lr in sorted(cells):
        for key, digits, title in (("final_accuracy", 3, "final greedy accuracy"),
                                   ("kl_ref", 2, "KL(pi || ref) of the final policy, sampled, nats per completion"),
                                   ("steps_to_target", 0, f"steps to greedy accuracy {target} [seeds reaching it]")):
            print(f"\nlr {lr:g}, {title}, median (min-max) over the seeds; initial accuracy {base:.3f}:\n")
            print("| loss | " + " | ".join(f"lag {l}" for l in lags) + " |")
            print("|---|" + "---|" * len(lags))
            for loss, by_lag in cells[lr].items():
                row = []
                for l in lags:
                    c = by_lag[str(l)]
                    text = fmt(c[key], digits) if key != "steps_to_target" or c["reached"] else "n/a"
                    row.append(text + (f" [{c['reached']}]" if key == "steps_to_target" else ""))
                print(f"| `{loss}` | " + " | ".join(row) + " |")
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lrs = sorted(cells)
        fig, axes = plt.subplots(len(lrs), 2, figsize=(12, 4.2 * len(lrs)), squeeze=False)
        x = list(range(len(lags)))
        for row, lr in zip(axes, lrs):
            for loss, by_lag in cells[lr].items():
                for ax, key in zip(row, ("final_accuracy", "kl_ref")):
                    cs = [by_lag[str(l)][key] for l in lags]
                    med = [c["median"] for c in cs]
                    ax.errorbar(x, med, yerr=[[m - c["min"] for m, c in zip(med, cs)],
                                              [c["max"] - m for m, c in zip(med, cs)]],
                                marker="o", capsize=3, label=loss, ls="--" if "-" in loss else "-")
            row[0].axhline(base, color="grey", ls=":", label="initial policy")
            row[1].set_yscale("log")
            for ax, title in zip(row, ("final greedy accuracy", "KL(pi || ref), nats per completion (log)")):
                ax.set_xticks(x, [str(l) for l in lags])
                ax.set_xlabel("max_lag (learner updates between sampling and training)")
                ax.set_title(f"{title}, lr {lr:g}", fontsize=9)
                ax.grid(alpha=0.3)
            row[0].legend(fontsize=7, ncol=2)
        fig.suptitle(f"off-policy robustness on arithmetic, {parts[0]['steps']} steps: median and range over "
                     f"{parts[0]['seeds']} seeds", fontsize=10)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        print(f"\nwrote {png}")


def _flags(variant: str, lr: float, lag: int, seed: int, args) -> list[str]:
    return [*LOSSES[variant], "--lr", str(lr), "--max-lag", str(lag), "--workers", "inline", "--seed", str(seed),
            "--steps", str(args.steps), "--eval-every", str(args.eval_every), "--learner-threads",
            str(args.threads), "--generator-threads", str(args.threads), *args.extra]


def estimate(args, variants: list[str], lrs: list[float], lags: list[int], out: Path) -> None:
    """Prints the grid and its estimated duration: one calibration run per variant (the largest lag,
    the first lr, ``--calibrate-steps`` steps, evaluations at 0 and the end) measures seconds per
    step, per evaluation and for the KL estimate, plus the process start-up; extrapolated per cell
    and divided by ``--parallel`` (assumes parallel runs do not slow each other)."""
    import time

    from _common import run_once, train_cmd

    n_cells = len(variants) * len(lrs) * len(lags)
    evals_per_run = 2 + (args.steps - 1) // args.eval_every if args.eval_every else 2
    print(f"grid: {len(variants)} variants x {len(lrs)} lrs x {len(lags)} lags x {args.seeds} seeds = "
          f"{n_cells * args.seeds} runs of {args.steps} steps, {evals_per_run} evaluations each")
    print(f"  variants: {', '.join(variants)}\n  lrs: {lrs}\n  lags: {lags}")
    total = 0.0
    for v in variants:
        cal = argparse.Namespace(**{**vars(args), "steps": args.calibrate_steps, "eval_every": args.calibrate_steps})
        run = out / "calibration" / v
        t0 = time.perf_counter()
        s = run_once(run, train_cmd(run, _flags(v, lrs[0], max(lags), 0, cal)))
        process_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        final_kl(run, args.kl_samples)
        kl_s = time.perf_counter() - t1
        evals = read_jsonl(run / "eval.jsonl")
        eval_s = sum(e.get("eval_time_s", 0.0) for e in evals) / len(evals)
        step_s = s["wall_time_s"] / args.calibrate_steps
        startup_s = max(0.0, process_s - s["wall_time_s"] - eval_s * len(evals))
        per_run = startup_s + args.steps * step_s + evals_per_run * eval_s + kl_s
        total += per_run * len(lrs) * len(lags) * args.seeds
        print(f"  {v:22} {step_s:6.3f} s/step, {eval_s:5.1f} s/eval, {kl_s:5.1f} s KL, {startup_s:5.1f} s start"
              f" -> {per_run / 60:5.1f} min/run")
    print(f"estimated: {total / 3600:.2f} h serial, {total / 3600 / max(1, args.parallel):.2f} h with "
          f"--parallel {args.parallel} (calibrated on this machine now; lr changes no timing)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-offpolicy")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--lags", default="0,1,2,4,8,16")
    ap.add_argument("--lrs", default="5e-5", help="comma-separated learning rates (a grid axis)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=25, help="evaluations for the time to --target")
    ap.add_argument("--target", type=float, default=0.4, help="accuracy for the time-to-target column")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (accuracy and KL do not depend on speed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--kl-samples", type=int, default=4, help="samples per eval prompt for the KL estimate")
    ap.add_argument("--dry-run", action="store_true", help="print the grid and an estimated duration, then stop")
    ap.add_argument("--calibrate-steps", type=int, default=10, help="steps of each --dry-run calibration run")
    ap.add_argument("--list", action="store_true", help="print the loss variants and their flags")
    ap.add_argument("--report", nargs="+", metavar="RESULTS.json",
                    help="print Markdown tables of earlier sweeps' results.json (merged), train nothing")
    ap.add_argument("--report-png", help="with --report: one plot of accuracy and KL vs lag per learning rate")
    ap.add_argument("extra", nargs="*", help="after --: more asyncrl train flags for every run")
    args = ap.parse_args()
    if args.report:
        report(args.report, args.report_png)
        return
    if args.list:
        for name, flags in LOSSES.items():
            print(f"{name:22} {' '.join(flags)}")
        return
    out = Path(args.out)
    losses, lags = args.losses.split(","), [int(x) for x in args.lags.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    unknown = [x for x in losses if x not in LOSSES]
    if unknown:
        ap.error(f"unknown loss(es) {unknown}; choose from {', '.join(LOSSES)}")
    if args.dry_run:
        estimate(args, losses, lrs, lags, out)
        return
    jobs, keys = [], []
    # Seed-major order: a partial sweep already covers every cell once.
    for seed in range(args.seeds):
        for lr in lrs:
            for lag in lags:
                for loss in losses:
                    jobs.append((out / f"{loss}-lr{lr:g}-lag{lag}-s{seed}", _flags(loss, lr, lag, seed, args)))
                    keys.append((loss, lr, lag, seed))
    summaries = run_many(jobs, args.parallel)
    import torch

    torch.set_num_threads(2)
    runs = []
    for (loss, lr, lag, seed), (run, _), s in zip(keys, jobs, summaries):
        rows = read_jsonl(run / "metrics.jsonl")
        tail = rows[-max(1, len(rows) // 10):]
        hit = first_reach(run, args.target)
        runs.append({
            "loss": loss, "lr": lr, "max_lag": lag, "seed": seed, "run": str(run),
            "final_accuracy": s["final_accuracy"],
            "kl_ref": final_kl(run, args.kl_samples),
            "time_to_target_s": hit[1] if hit else None,
            "steps_to_target": hit[0] if hit else None,
            # the learner's own view over the last 10% of steps, on the (stale) samples it trained on
            "train_kl_last10pct": sum(r["kl"] for r in tail) / len(tail),
            "reward_last10pct": sum(r["reward_mean"] for r in tail) / len(tail),
            "staleness_mean_last10pct": sum(r["staleness_mean"] for r in tail) / len(tail),
            # what the corrections did (absent for losses without one)
            **{k: sum(r.get(f"loss/{k}", 0.0) for r in rows) / len(rows)
               for k in ("is_weight_mean", "is_masked_token_fraction", "is_masked_seq_fraction",
                         "is_clipped_token_fraction", "dual_clip_fraction") if f"loss/{k}" in rows[-1]},
            "wall_time_s": s["wall_time_s"],
        })
    metrics = ("final_accuracy", "kl_ref", "time_to_target_s", "steps_to_target", "reward_last10pct")

    def cell(loss, lr, lag):
        return [r for r in runs if r["loss"] == loss and r["lr"] == lr and r["max_lag"] == lag]

    table = {str(lr): {loss: {str(lag): {**{key: spread(r[key] for r in cell(loss, lr, lag)) for key in metrics},
                                         "reached": sum(r["steps_to_target"] is not None for r in cell(loss, lr, lag))}
                              for lag in lags} for loss in losses} for lr in lrs}
    base = read_jsonl(out / f"{losses[0]}-lr{lrs[0]:g}-lag{lags[0]}-s0" / "eval.jsonl")[0]["accuracy"]
    results = {"steps": args.steps, "seeds": args.seeds, "lags": lags, "lrs": lrs, "target": args.target,
               "eval_every": args.eval_every, "extra": args.extra, "base_accuracy": base,
               "machine": machine(), "table": table, "runs": runs}
    write_json(out / "results.json", results)
    plot(results, lags, out / "offpolicy.png")
    for lr in lrs:
        for key, digits, title in (("final_accuracy", 3, "final greedy accuracy"),
                                   ("kl_ref", 2, "KL(pi||ref), nats/seq"),
                                   ("time_to_target_s", 1, f"training s to accuracy {args.target} (seeds reaching)")):
            print(f"\nlr {lr:g}, {title}: median (min-max) over {args.seeds} seeds, {args.steps} steps; "
                  f"initial accuracy {base:.3f}")
            print(f"{'loss':22}" + "".join(f"{'lag ' + str(l):>22}" for l in lags))
            for loss in losses:
                cells = [table[str(lr)][loss][str(l)] for l in lags]
                suffix = [f" [{c['reached']}]" if key == "time_to_target_s" else "" for c in cells]
                print(f"{loss:22}" + "".join(f"{fmt(c[key], digits) + sfx:>22}" for c, sfx in zip(cells, suffix)))
    print(f"\nwrote {out / 'results.json'} and {out / 'offpolicy.png'}")


if __name__ == "__main__":
    main()
