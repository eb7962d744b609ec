"""Benchmark: how each loss tolerates off-policy data (the seeds' central experiment).

Every loss is trained on ``arithmetic`` at each ``max_lag`` with ``workers: inline``: the generator
runs in the learner's thread, ``max_lag`` requests ahead, so after the first ``max_lag`` steps every
batch is trained exactly ``max_lag`` updates after the weights that sampled it (a simulated lag,
deterministic for a seed, as in Noukhovitch et al.'s off-policy experiment). ``max_lag 0`` is
ordinary synchronous on-policy training. Per run we record the final greedy accuracy on the 200
eval prompts and the KL(pi || ref) of the final policy to the initial one, estimated by sampling
(``evaluation.sampled_kl``: 4 samples per eval prompt, sequence-summed log-ratio).

Writes ``results.json``, ``offpolicy.png`` and prints two tables (median, min-max over seeds).

    python benchmarks/offpolicy_sweep.py --out runs/bench-offpolicy --seeds 3 --steps 200 --parallel 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, read_jsonl, run_many, spread, write_json  # noqa: E402

LOSSES = {
    "tb": ["--loss", "tb"],
    "online_dpo": ["--loss", "online_dpo"],
    "rloo": ["--loss", "rloo"],
    "ppo": ["--loss", "ppo"],
    "grpo": ["--loss", "grpo"],
    "dr_grpo": ["--loss", "grpo", "--variant", "dr_grpo"],
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
    pi, ref = load_model(str(ckpt), dev), load_model(resolve_model_path(cfg.model, cfg.task), dev)
    prompts = [p.text for p in make_task(cfg).eval_prompts()]
    return sampled_kl(pi, ref, load_tokenizer(str(ckpt)), prompts, samples_per_prompt=samples_per_prompt,
                      max_new_tokens=cfg.max_new_tokens, chat_template=cfg.chat_template)


def plot(results: dict, lags: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x = list(range(len(lags)))
    for loss, by_lag in results["table"].items():
        for ax, key in zip(axes, ("final_accuracy", "kl_ref")):
            med = [by_lag[str(l)][key]["median"] for l in lags]
            lo = [m - by_lag[str(l)][key]["min"] for m, l in zip(med, lags)]
            hi = [by_lag[str(l)][key]["max"] - m for m, l in zip(med, lags)]
            ax.errorbar(x, med, yerr=[lo, hi], marker="o", capsize=3, label=loss)
    base = results.get("base_accuracy")
    if base is not None:
        axes[0].axhline(base, color="grey", ls=":", label="initial policy")
    for ax, title in zip(axes, ("final greedy accuracy", "KL(pi || ref), sampled, nats/sequence")):
        ax.set_xticks(x, [str(l) for l in lags])
        ax.set_xlabel("max_lag (learner updates between sampling and training)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"off-policy robustness on arithmetic: {results['steps']} steps, median and range over "
                 f"{results['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-offpolicy")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--lags", default="0,1,2,4,8,16")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (accuracy and KL do not depend on speed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--kl-samples", type=int, default=4, help="samples per eval prompt for the KL estimate")
    ap.add_argument("extra", nargs="*", help="after --: more asyncrl train flags for every run")
    args = ap.parse_args()
    out = Path(args.out)
    losses, lags = args.losses.split(","), [int(x) for x in args.lags.split(",")]
    unknown = [x for x in losses if x not in LOSSES]
    if unknown:
        ap.error(f"unknown loss(es) {unknown}; choose from {', '.join(LOSSES)}")
    jobs, keys = [], []
    # Seed-major order: a partial sweep already covers every cell once.
    for seed in range(args.seeds):
        for lag in lags:
            for loss in losses:
                flags = [*LOSSES[loss], "--max-lag", str(lag), "--workers", "inline", "--seed", str(seed),
                         "--steps", str(args.steps), "--eval-every", "0", "--learner-threads", str(args.threads),
                         "--generator-threads", str(args.threads), *args.extra]
                jobs.append((out / f"{loss}-lag{lag}-s{seed}", flags))
                keys.append((loss, lag, seed))
    summaries = run_many(jobs, args.parallel)
    import torch

    torch.set_num_threads(2)
    runs = []
    for (loss, lag, seed), (run, _), s in zip(keys, jobs, summaries):
        rows = read_jsonl(run / "metrics.jsonl")
        tail = rows[-max(1, len(rows) // 10):]
        runs.append({
            "loss": loss, "max_lag": lag, "seed": seed, "run": str(run),
            "final_accuracy": s["final_accuracy"],
            "kl_ref": final_kl(run, args.kl_samples),
            # the learner's own view over the last 10% of steps, on the (stale) samples it trained on
            "train_kl_last10pct": sum(r["kl"] for r in tail) / len(tail),
            "reward_last10pct": sum(r["reward_mean"] for r in tail) / len(tail),
            "staleness_mean_last10pct": sum(r["staleness_mean"] for r in tail) / len(tail),
            "wall_time_s": s["wall_time_s"],
        })
    table = {
        loss: {str(lag): {key: spread(r[key] for r in runs if r["loss"] == loss and r["max_lag"] == lag)
                          for key in ("final_accuracy", "kl_ref", "reward_last10pct")}
               for lag in lags}
        for loss in losses
    }
    base = read_jsonl(out / f"{losses[0]}-lag{lags[0]}-s0" / "eval.jsonl")[0]["accuracy"]
    results = {"steps": args.steps, "seeds": args.seeds, "lags": lags, "extra": args.extra, "base_accuracy": base,
               "machine": machine(), "table": table, "runs": runs}
    write_json(out / "results.json", results)
    plot(results, lags, out / "offpolicy.png")
    for key, digits, title in (("final_accuracy", 3, "final greedy accuracy"), ("kl_ref", 2, "KL(pi||ref), nats/seq")):
        print(f"\n{title}: median (min-max) over {args.seeds} seeds, {args.steps} steps; initial accuracy {base:.3f}")
        print(f"{'loss':11}" + "".join(f"{'lag ' + str(l):>20}" for l in lags))
        for loss in losses:
            print(f"{loss:11}" + "".join(f"{fmt(table[loss][str(l)][key], digits):>20}" for l in lags))
    print(f"\nwrote {out / 'results.json'} and {out / 'offpolicy.png'}")


if __name__ == "__main__":
    main()
