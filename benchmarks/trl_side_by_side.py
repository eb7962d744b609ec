"""Benchmark: TRL's ``GRPOTrainer`` side by side with asyncrl on the same job, machine and run.

Measures, per mode, the training wall-clock (evaluation excluded) until greedy eval accuracy first
reaches ``--target``, the final greedy accuracy and the total training wall-clock, for

    trl         TRL GRPOTrainer (synchronous, on-policy; trl==1.16.0, benchmarks/requirements-trl.txt)
    grpo-sync   asyncrl train --loss grpo --max-lag 0
    grpo-async  asyncrl train --loss grpo            (max_lag 2, the config default)
    tb-async    asyncrl train --loss tb              (max_lag 2)

on the built-in ``arithmetic`` task: same tiny model (asyncrl/assets/arithmetic-base), same
char-level tokenizer, same prompt stream, same reward code, 16 prompts x 8 samples = 128
completions per optimizer step, max 8 new tokens, and the same evaluation function
(asyncrl.evaluation.evaluate, greedy, 200 eval prompts) every ``--eval-every`` steps, at step 0
and at the end. Seeds are interleaved (trl, grpo-sync, grpo-async, tb-async, then the next seed)
so machine noise hits every mode alike; every run is a fresh process. Reports median and min-max
over seeds, the per-seed ratio of TRL's wall-clock to each asyncrl mode's, and writes
``results.json``, ``trl_side_by_side.png`` (accuracy vs training wall-clock and vs samples) into
--out; each run folder holds ``eval.jsonl`` / ``metrics.jsonl`` / ``summary.json`` in asyncrl's
format, so ``asyncrl plot`` draws TRL runs beside asyncrl runs. Finished runs are skipped, so an
interrupted benchmark resumes.

    pip install -r benchmarks/requirements-trl.txt   # trl only; TRL is not an asyncrl dependency
    python benchmarks/trl_side_by_side.py --out runs/bench-trl --seeds 3 --steps 300

How TRL is set up to match asyncrl's ``grpo`` loss (asyncrl/losses/grpo.py, config defaults):

* prompts: the first ``steps * 16`` prompts of ``task.train_prompts(seed * 1000)``, the stream
  asyncrl's (single) generator draws for ``--seed seed``, as a Dataset in that order with
  ``shuffle_dataset=False``: step i of TRL sees exactly the 16 prompts of asyncrl's step i. Plain
  text prompts; the tokenizer has no chat template, so TRL and asyncrl both encode
  ``<s>`` + characters (checked at start-up against ``asyncrl.policy.encode_prompts``).
* reward: ``asyncrl.tasks.base.checked_rewards(task, ...)``, the very call asyncrl's generator
  makes, on ``decode(completion_ids, skip_special_tokens=True)`` of the completion up to and
  including the first EOS, which is what asyncrl decodes too (asserted on every batch).
* batch: ``num_generations=8``, ``per_device_train_batch_size=128`` (TRL counts completions),
  ``gradient_accumulation_steps=1``, ``steps_per_generation=1``, ``num_iterations=1``: one fresh
  generation of 16 prompts x 8 per optimizer step, trained on once, on-policy, as one micro-batch
  (asyncrl: ``micro_batch_prompts=None``).
* sampling: ``temperature=1.0``, ``top_k=0``, ``top_p=1.0``, no min_p / repetition penalty:
  the full softmax, as asyncrl's HF engine; ``max_completion_length=8`` (= max_new_tokens); stop
  at EOS; truncated completions are kept in the loss (``mask_truncated_completions=False``).
* loss: ``loss_type="grpo"`` (per-sequence mean over completion tokens, then mean over
  sequences, = asyncrl variant ``grpo``), ``scale_rewards="group"`` (A = (r - mean) / (std +
  1e-4) per group), ``epsilon=0.2`` (= clip_eps), ``beta=0.05`` (= kl_coef) with the same k3
  estimator exp(ref - logp) - (ref - logp) - 1 added per token, ``use_bias_correction_kl=False``
  (asyncrl's KL term is not multiplied by the importance ratio); reference = the initial model.
* optimisation: the optimizer and scheduler objects are asyncrl's own
  (``asyncrl.optim.make_optimizer``: torch AdamW, betas (0.9, 0.999), eps 1e-8, weight decay
  0, lr 5e-5, linear warmup 10 steps then cosine to 0 at ``--steps``), passed to the trainer via
  ``optimizers=``; ``max_grad_norm=1.0``. (GRPOConfig also names the same lr / cosine / warmup.)
* numerics and threads: the model object comes from ``asyncrl.policy.load_model`` (fp32 on CPU,
  bf16 weights on GPU) with ``bf16=fp16=False`` (no autocast), ``gradient_checkpointing=False``
  (TRL's default is True; asyncrl does not checkpoint), ``use_cpu`` without CUDA, torch threads =
  all cores (asyncrl's choice for synchronous runs).
* clock: a TrainerCallback starts it when training starts (after set-up, like asyncrl after its
  workers are ready), evaluates at step 0, every ``--eval-every`` steps and after the last step,
  and subtracts the evaluation time, as asyncrl's runtime does.

Remaining differences (TRL does not expose a switch for them):

* std of the group rewards: TRL divides by K-1 (sample std), asyncrl by K (population std), so
  TRL's advantages are sqrt((K-1)/K) = 0.935x asyncrl's for K=8: a slightly smaller policy-gradient
  term next to the same KL term.
* truncated importance sampling: asyncrl ``grpo`` multiplies each token's term by
  min(pi_learner/pi_behaviour, 2) against the sampler's own log-probs (``is_cap``); on-policy this
  is 1 up to the numerical difference between the KV-cached sampling forward and the learner's
  full forward. TRL without vLLM applies no such weight.
* reference log-probs: asyncrl computes them once per sample on the generator
  (``reference_on: generator``); TRL computes them in the trainer before the step. Same values,
  different place (for asyncrl's async modes the generator's time overlaps the learner's).
* position ids: asyncrl passes padding-aware position ids to every forward; TRL's training forward
  counts positions from the left padding. The model uses rotary embeddings only (relative
  positions), so this changes nothing but rounding.
* extra work TRL does each step that asyncrl does not: per-token entropy (a metric), its metric
  bookkeeping and logging (``logging_steps=1`` here so every step is recorded).
* random streams: sampling noise and initial seeds differ (TRL: ``set_seed(seed)``; asyncrl:
  ``torch.manual_seed`` per role), so runs with the same seed see the same prompts but not the
  same samples.
* the ``tb`` and async modes are different algorithms / schedules by design: they are the asyncrl
  configurations being compared, not matched baselines.

A hidden ``--trl-run RUN_DIR`` mode runs one TRL training in this process (the benchmark starts
one subprocess per TRL run); ``--debug N`` there prints N decoded completions with their rewards
for the first steps and the per-step reward.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, machine, run_once, run_train, spread, time_to_target, write_json  # noqa: E402

from asyncrl.plotting import load_run  # noqa: E402

ASYNCRL_MODES = {
    "grpo-sync": ["--loss", "grpo", "--max-lag", "0"],
    "grpo-async": ["--loss", "grpo"],
    "tb-async": ["--loss", "tb"],
}
MODES = ("trl", *ASYNCRL_MODES)
TRL_VERSION = "1.16.0"  # the version the settings below were checked against (benchmarks/requirements-trl.txt)
PNG = "trl_side_by_side.png"


# --------------------------------------------------------------------------------------------
# One TRL run (in its own process)
# --------------------------------------------------------------------------------------------


def prompt_stream_seed(seed: int) -> int:
    """The seed of the prompt stream asyncrl's generator draws for ``--seed seed``: its one worker
    (id 0) of a fresh run uses ``seed * 1000 + worker_id`` (asyncrl.runtime.worker.build_generator)."""
    return seed * 1000


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def trl_run(run_dir: Path, seed: int, steps: int, eval_every: int, debug: int = 0) -> dict:
    """Train with TRL's GRPOTrainer matched to asyncrl's ``grpo`` (see the module docstring);
    writes eval.jsonl, metrics.jsonl, trl_config.json and, last, summary.json into ``run_dir``."""
    t_setup = time.perf_counter()
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from asyncrl.config import Config
    from asyncrl.evaluation import evaluate
    from asyncrl.optim import make_optimizer
    from asyncrl.policy import encode_prompts, load_model, load_tokenizer, resolve_device, resolve_model_path
    from asyncrl.runtime.worker import default_threads
    from asyncrl.tasks import make_task
    from asyncrl.tasks.base import checked_rewards
    from asyncrl.types import Prompt

    # The asyncrl config of ``asyncrl train --loss grpo --max-lag 0 --seed S --steps N``: every
    # number below is read from it, so the two stay matched if the defaults change.
    cfg = Config(task="arithmetic", loss="grpo", max_lag=0, seed=seed, steps=steps, eval_every=eval_every)
    P, K = cfg.batch.prompts_per_step, cfg.batch.samples_per_prompt
    run_dir.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg)
    threads, _ = default_threads(cfg)  # synchronous: all cores
    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    path = resolve_model_path(cfg.model, cfg.task.name)
    tokenizer = load_tokenizer(path)
    model = load_model(path, device)

    stream = task.train_prompts(prompt_stream_seed(seed))
    prompts = [next(stream) for _ in range(steps * P)]
    # TRL tokenizes plain-text prompts as processing_class(text=prompts); asyncrl as encode_prompts.
    head = [p.text for p in prompts[:P]]
    if tokenizer(text=head)["input_ids"] != encode_prompts(tokenizer, head, cfg.chat_template):
        raise SystemExit("TRL and asyncrl would encode the prompts differently (chat template?)")
    dataset = Dataset.from_list([{"prompt": p.text, "prompt_id": p.prompt_id, "answer": p.meta["answer"]}
                                 for p in prompts])

    calls = {"n": 0}

    def arithmetic_reward(prompts, completions, completion_ids, answer, prompt_id, **_):
        if len(completions) != P * K:
            raise RuntimeError(f"expected {P * K} completions per step, TRL passed {len(completions)}")
        # The strings asyncrl's generator scores: decode(ids up to and including EOS, skip special).
        if [tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_ids] != list(completions):
            raise RuntimeError("TRL's completion strings differ from asyncrl's decoding of the same ids")
        rows = [Prompt(prompt_id=i, text=t, meta={"answer": a}) for t, a, i in zip(prompts, answer, prompt_id)]
        rewards, _ = checked_rewards(task, rows, list(completions), cfg.rewards.reward_errors)
        calls["n"] += 1
        if debug and calls["n"] <= 3:
            print(f"[debug] step {calls['n']}: {len(completions)} completions, "
                  f"{len(set(prompts))} distinct prompts, mean reward {sum(rewards) / len(rewards):.3f}")
            for j in range(0, min(len(completions), debug * K), K):  # first sample of the first groups
                print(f"[debug]   {prompts[j]!r} -> ids {completion_ids[j]} = {completions[j]!r} "
                      f"(answer {answer[j]}) reward {rewards[j]}")
        return rewards

    eval_path, metrics_path = run_dir / "eval.jsonl", run_dir / "metrics.jsonl"
    for p in (eval_path, metrics_path):
        p.unlink(missing_ok=True)

    class Clock(TrainerCallback):
        """Training wall-clock with evaluation excluded, and asyncrl-format eval/metrics rows."""

        def __init__(self):
            self.t0 = 0.0
            self.eval_s = 0.0
            self.end: float | None = None
            self.final_accuracy = None

        def wall(self) -> float:
            return self.end if self.end is not None else time.perf_counter() - self.t0 - self.eval_s

        def run_eval(self, step: int, model) -> float | None:
            w = self.wall()  # the training time at which these weights were reached, as asyncrl logs it
            te = time.perf_counter()
            metrics, rows = evaluate(model, tokenizer, task, max_new_tokens=cfg.sampling.max_new_tokens,
                                     limit=cfg.evaluation.eval_limit, chat_template=cfg.chat_template)
            dt = time.perf_counter() - te
            _append_jsonl(eval_path, {"step": step, "wall_time_s": w, "samples_seen": step * P * K,
                                      **metrics, "n": len(rows), "eval_time_s": dt})
            self.eval_s += dt
            return metrics.get("accuracy")

        def on_train_begin(self, args, state, control, model=None, **kw):
            if debug:
                print(f"[debug] torch threads {torch.get_num_threads()}, device {device}, "
                      f"dtype {next(model.parameters()).dtype}, generation batch {args.generation_batch_size}, "
                      f"steps_per_generation {args.steps_per_generation}")
            self.t0 = time.perf_counter()
            self.run_eval(0, model)

        def on_step_end(self, args, state, control, model=None, **kw):
            step = state.global_step
            if step >= steps:
                self.end = self.wall()  # training is over; the final evaluation follows train()
            elif eval_every and step % eval_every == 0:
                self.run_eval(step, model)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "reward" not in logs:  # the closing train_runtime summary
                return
            step = state.global_step
            row = {"step": step, "wall_time_s": self.wall(), "samples_seen": step * P * K,
                   "reward_mean": logs.get("reward"), "loss": logs.get("loss"),
                   "kl_k3_token_mean": logs.get("kl"), "entropy": logs.get("entropy"),
                   "grad_norm": logs.get("grad_norm"), "lr": logs.get("learning_rate"),
                   "completion_tokens_mean": logs.get("completions/mean_length"),
                   "frac_reward_zero_std": logs.get("frac_reward_zero_std"),
                   "trl_step_time_s": logs.get("step_time")}
            _append_jsonl(metrics_path, row)
            if debug:
                print(f"[debug] step {step}: reward {row['reward_mean']:.3f} kl {row['kl_k3_token_mean']} "
                      f"loss {row['loss']} lr {row['lr']:.2e} wall {row['wall_time_s']:.2f}s")

    clock = Clock()
    use_cpu = device.type != "cuda"
    args = GRPOConfig(
        output_dir=str(run_dir / "trl"),
        seed=seed,
        max_steps=steps,
        # one generation of P prompts x K samples = one micro-batch = one optimizer step, on-policy
        num_generations=K,
        per_device_train_batch_size=P * K,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        shuffle_dataset=False,
        # sampling
        max_completion_length=cfg.sampling.max_new_tokens,
        temperature=cfg.sampling.temperature,
        top_k=0,
        top_p=1.0,
        min_p=None,
        repetition_penalty=1.0,
        mask_truncated_completions=False,
        # loss: asyncrl grpo, variant grpo
        loss_type="grpo",
        scale_rewards="group",
        epsilon=cfg.loss.clip_eps,
        beta=cfg.loss.kl_coef,
        use_bias_correction_kl=False,
        importance_sampling_level="token",
        # optimisation (the optimizer/scheduler objects themselves are asyncrl's, passed below)
        learning_rate=cfg.optimizer.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.optimizer.warmup_steps,
        weight_decay=cfg.optimizer.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=cfg.optimizer.max_grad_norm,
        # numerics / plumbing
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=arithmetic_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
        optimizers=make_optimizer(model.parameters(), cfg),
    )
    setup_s = time.perf_counter() - t_setup
    trainer.train()
    if clock.end is None:
        clock.end = clock.wall()
    final_acc = clock.run_eval(trainer.state.global_step, trainer.model)
    write_json(run_dir / "trl_config.json", {
        "trl_version": trl.__version__, "seed": seed, "prompt_stream_seed": prompt_stream_seed(seed),
        "asyncrl_config": cfg.model_dump(),
        "grpo_config": {k: getattr(args, k) for k in (
            "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
            "steps_per_generation", "generation_batch_size", "num_iterations", "max_completion_length",
            "temperature", "top_k", "top_p", "loss_type", "scale_rewards", "epsilon", "beta",
            "use_bias_correction_kl", "learning_rate", "lr_scheduler_type", "warmup_steps", "max_grad_norm",
            "bf16", "gradient_checkpointing", "max_steps")},
        "optimizer": "asyncrl.optim.make_optimizer (AdamW + warmup/cosine LambdaLR)",
        "torch_threads": torch.get_num_threads(),
    })
    summary = {
        "framework": "trl",
        "trl_version": trl.__version__,
        "steps": trainer.state.global_step,
        "final_accuracy": final_acc,
        "wall_time_s": clock.end,
        "setup_time_s": setup_s,
        "samples_seen": trainer.state.global_step * P * K,
        "eval_time_s": clock.eval_s,
    }
    write_json(run_dir / "summary.json", summary)  # last: its presence marks a finished run
    return summary


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def run_trl(run_dir: Path, seed: int, steps: int, eval_every: int) -> dict:
    """One TRL run in a fresh process (skipped when ``run_dir`` already holds a finished run)."""
    return run_once(run_dir, [sys.executable, str(Path(__file__).resolve()), "--trl-run", str(run_dir),
                              "--seed", str(seed), "--steps", str(steps), "--eval-every", str(eval_every)])


def plot(out: Path, modes: list[str], runs: dict[str, list[dict]], target: float) -> Path | None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)")
        return None
    fig = Figure(figsize=(12.4, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (xi, xlabel) in zip(axes, ((0, "training wall-clock, s (evaluation excluded)"),
                                        (1, "samples (completions) trained on"))):
        for i, mode in enumerate(modes):
            for j, r in enumerate(runs[mode]):
                pts = [(p.wall, p.samples, p.values["accuracy"]) for p in load_run(r["run_dir"]).evals
                       if "accuracy" in p.values]
                pts = [p for p in pts if p[xi] is not None]
                ax.plot([p[xi] for p in pts], [p[2] for p in pts], "o-", color=f"C{i}",
                        markersize=2.5, linewidth=1.1, alpha=0.75, label=mode if j == 0 else None)
        ax.axhline(target, color="grey", ls=":", linewidth=1, label=f"target {target}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("greedy eval accuracy (200 prompts)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy vs training wall-clock")
    axes[1].set_title("accuracy vs samples")
    axes[0].legend(fontsize=8)
    n = max(len(v) for v in runs.values())
    seeds = f"{n} seed" + ("s" if n != 1 else "")
    fig.suptitle(f"TRL GRPOTrainer vs asyncrl on arithmetic, one line per seed ({seeds})", fontsize=10)
    path = out / PNG
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-trl")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1, interleaved across modes")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per run (every mode)")
    ap.add_argument("--target", type=float, default=0.45, help="greedy eval accuracy to time")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {','.join(MODES)}")
    ap.add_argument("--trl-run", metavar="RUN_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--debug", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_run:
        trl_run(Path(args.trl_run), args.seed, args.steps, args.eval_every, args.debug)
        return

    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if "trl" in modes and not _installed("trl"):
        ap.error("mode trl needs TRL: pip install -r benchmarks/requirements-trl.txt")
    if "trl" in modes and _version("trl") != TRL_VERSION:
        print(f"warning: trl {_version('trl')} is installed; this benchmark was matched against trl "
              f"{TRL_VERSION} (benchmarks/requirements-trl.txt)", file=sys.stderr)
    out = Path(args.out)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for seed in range(args.seeds):
        for mode in modes:
            run_dir = out / f"{mode}-s{seed}"
            if mode == "trl":
                s = run_trl(run_dir, seed, args.steps, args.eval_every)
            else:
                s = run_train(run_dir, ["--seed", str(seed), "--steps", str(args.steps),
                                        "--eval-every", str(args.eval_every), *ASYNCRL_MODES[mode]])
            runs[mode].append({
                "seed": seed,
                "run_dir": str(run_dir),
                "wall_time_s": s["wall_time_s"],
                "time_to_target_s": time_to_target(run_dir, args.target),
                "final_accuracy": s["final_accuracy"],
                "steps": s["steps"],
                "samples_seen": s["samples_seen"],
                "per_step_s": s["wall_time_s"] / max(1, s["steps"]),
            })

    table = {}
    for m, rows in runs.items():
        table[m] = {
            "time_to_target_s": spread(r["time_to_target_s"] for r in rows),
            "final_accuracy": spread(r["final_accuracy"] for r in rows),
            "wall_time_s": spread(r["wall_time_s"] for r in rows),
            "per_step_s": spread(r["per_step_s"] for r in rows),
            "reached": sum(r["time_to_target_s"] is not None for r in rows),
            "n": len(rows),
        }
    ratios = {}
    if "trl" in runs:
        for m in modes:
            if m == "trl":
                continue
            pairs = list(zip(runs["trl"], runs[m]))
            ratios[m] = {
                "wall": [t["wall_time_s"] / a["wall_time_s"] for t, a in pairs],
                "time_to_target": [t["time_to_target_s"] / a["time_to_target_s"]
                                   if t["time_to_target_s"] and a["time_to_target_s"] else None for t, a in pairs],
            }
    versions = {p: _version(p) for p in ("trl", "transformers", "torch", "asyncrl") if _installed(p)}
    png = plot(out, modes, runs, args.target)
    write_json(out / "results.json", {
        "target": args.target, "steps": args.steps, "eval_every": args.eval_every, "seeds": args.seeds,
        "modes": modes, "asyncrl_flags": {m: ASYNCRL_MODES[m] for m in modes if m in ASYNCRL_MODES},
        "machine": machine(), "versions": versions, "runs": runs, "table": table,
        "trl_over_asyncrl_ratio": ratios, "png": str(png) if png else None,
    })

    print(f"\n{args.steps} steps x 128 completions; target accuracy {args.target}; "
          f"median (min-max) over {args.seeds} seed(s); wall-clock excludes evaluation")
    print(f"{'mode':11} {'time to target s':>24} {'final accuracy':>22} {'wall s':>24} {'s/step':>7} {'reached':>8}")
    for m in modes:
        t = table[m]
        print(f"{m:11} {fmt(t['time_to_target_s']):>24} {fmt(t['final_accuracy'], 3):>22} "
              f"{fmt(t['wall_time_s']):>24} {t['per_step_s']['median']:7.2f} {t['reached']:>5}/{t['n']}")
    if ratios:
        print("\nTRL / asyncrl, per seed (> 1: TRL slower)")
        for m, r in ratios.items():
            tt = ", ".join("n/a" if v is None else f"{v:.2f}" for v in r["time_to_target"])
            print(f"  vs {m:11} wall-clock: {', '.join(f'{v:.2f}' for v in r['wall'])}; time to target: {tt}")
    print(f"\nwrote {out / 'results.json'}" + (f" and {png}" if png else ""))


def _version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _installed(name: str) -> bool:
    return _version(name) is not None


if __name__ == "__main__":
    main()
