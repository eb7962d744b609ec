"""The loop shared by ``asyncrl sft`` and ``asyncrl rm``: batches, AdamW + schedule, clipping,
run-folder logging, held-out evaluation and checkpoints.

Run folder: ``config.yaml`` (resolved, with ``steps`` filled in from ``epochs``), ``metrics.jsonl``
(one line per optimizer step), ``eval.jsonl`` (held-out metrics at step 0, every ``eval_every``
steps and at the end), ``tb/`` (TensorBoard; wandb too, as ``report_to`` says),
``checkpoints/step_N/`` (``save_pretrained`` model + tokenizer; ``checkpoints/latest`` names the
newest) and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from asyncrl.checkpoint import save_checkpoint
from asyncrl.config import Config, ConfigError, save_config
from asyncrl.data import batches
from asyncrl.io import atomic_write_text
from asyncrl.metrics import Reporters, check_report_to, progress_line
from asyncrl.optim import make_optimizer


def prepare_run_dir(cfg: Config) -> Path:
    run_dir = Path(cfg.output_dir)
    if cfg.resume:
        raise ConfigError("sft and rm do not resume; start a new run (e.g. --model <run>/checkpoints/step_N)")
    if (run_dir / "checkpoints").exists():
        raise ConfigError(f"{run_dir} already holds a run with checkpoints; choose another --output-dir")
    check_report_to(cfg)
    return run_dir


def set_threads(cfg: Config) -> None:
    if cfg.learner_threads:
        torch.set_num_threads(cfg.learner_threads)


def micro_slices(n: int, micro: int | None) -> list[slice]:
    m = micro or n
    return [slice(i, min(n, i + m)) for i in range(0, n, m)]


class _Log:
    def __init__(self, run_dir: Path, cfg: Config):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = open(run_dir / "metrics.jsonl", "a")
        self.eval = open(run_dir / "eval.jsonl", "a")
        self.reporters = Reporters(cfg, run_dir)  # report_to: tb/, wandb

    def write(self, f, prefix: str, row: dict) -> None:
        f.write(json.dumps(row) + "\n")
        f.flush()
        self.reporters.log(prefix, row)

    def close(self) -> None:
        self.metrics.close()
        self.eval.close()
        self.reporters.close()


def run_loop(
    cfg: Config,
    run_dir: Path,
    kind: str,
    model,
    tokenizer,
    n_train: int,
    step_fn: Callable[[list[int]], dict],
    eval_fn: Callable[[], dict] | None,
    extra_summary: dict,
) -> dict:
    """Train for ``cfg.steps`` optimizer steps. ``step_fn(row_indices)`` runs forward/backward for
    one batch (gradients accumulate into the model) and returns metrics, including ``loss`` and
    ``tokens`` (tokens forwarded); ``eval_fn()`` returns held-out metrics."""
    torch.manual_seed(cfg.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, cfg)
    save_config(cfg, run_dir / "config.yaml")
    config_yaml = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
    log = _Log(run_dir, cfg)
    step = samples = 0
    wall = 0.0  # training time only; evaluation is excluded
    last: dict = {}
    last_eval: dict | None = None
    ckpt = None
    interrupted = False
    print_every = cfg.logging.logging_steps

    def evaluate() -> None:
        nonlocal last_eval
        if eval_fn is None:
            return
        model.eval()
        with torch.no_grad():
            last_eval = {"step": step, **eval_fn()}
        model.train()
        log.write(log.eval, "eval", last_eval)
        progress_line(f"{kind} eval step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in last_eval.items()
                                                              if k != "step" and isinstance(v, float)))

    def checkpoint() -> Path:
        state = {"command": kind, "step": step, "samples_seen": samples}
        return save_checkpoint(run_dir, step, model, tokenizer, state, config_yaml, keep=cfg.checkpoint.keep_checkpoints)

    try:
        evaluate()
        it = batches(n_train, cfg.data.batch_size, cfg.seed)
        while step < cfg.steps:
            t0 = time.perf_counter()
            idx = next(it)
            opt.zero_grad(set_to_none=True)
            m = step_fn(idx)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, cfg.optimizer.max_grad_norm if cfg.optimizer.max_grad_norm else float("inf")
            ).item()
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            step += 1
            samples += len(idx)
            dt = time.perf_counter() - t0
            wall += dt
            tokens = m.pop("tokens")
            last = {"step": step, "wall_time_s": wall, "samples_seen": samples, **m, "lr": lr,
                    "grad_norm": grad_norm, "tokens": tokens, "tokens_per_s": tokens / dt, "train_time_s": dt}
            log.write(log.metrics, "train", last)
            if step % print_every == 0 or step == cfg.steps:
                progress_line(f"{kind} step {step}/{cfg.steps} t={wall:.1f}s loss {last['loss']:.4f} lr {lr:.2e} "
                              f"{last['tokens_per_s']:.0f} tok/s")
            if cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0 and step < cfg.steps:
                ckpt = checkpoint()
            if cfg.evaluation.eval_every and step % cfg.evaluation.eval_every == 0 and step < cfg.steps:
                evaluate()
        evaluate()
    except KeyboardInterrupt:
        # The optimizer step in flight is dropped; the weights are those after ``step`` updates.
        interrupted = True
    ckpt = checkpoint()
    log.close()
    summary = {
        "command": kind, "steps": step, "samples_seen": samples, "wall_time_s": wall,
        "final_loss": last.get("loss"), "final_eval": last_eval, "checkpoint": str(ckpt),
        "interrupted": interrupted, **extra_summary,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
