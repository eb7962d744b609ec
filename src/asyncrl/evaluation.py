"""Greedy evaluation of a policy on a task's fixed eval set (pass@1 with greedy decoding).

The same function serves periodic evaluation during training (``eval.jsonl``) and ``asyncrl eval``.
"""

from __future__ import annotations

import torch

from asyncrl.engines.hf import HFEngine
from asyncrl.policy import encode_prompts
from asyncrl.tasks.base import Task


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, *, max_new_tokens: int, limit: int | None = None,
             chat_template: str = "auto", batch_size: int = 64) -> tuple[dict[str, float], list[dict]]:
    """Returns (the task's metrics, e.g. ``accuracy``; one row per example) over the first ``limit``
    eval prompts (all when None)."""
    was_training = model.training
    engine = HFEngine(model, tokenizer, max_new_tokens=max_new_tokens, temperature=1.0)
    prompts = task.eval_prompts()[:limit] if limit else task.eval_prompts()
    texts: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            ids = encode_prompts(tokenizer, [p.text for p in chunk], chat_template)
            comps = engine.generate(ids, k=1, greedy=True)
            texts += [tokenizer.decode(g[0].ids, skip_special_tokens=True) for g in comps]
    finally:
        model.train(was_training)
    return task.evaluate(prompts, texts)


# --- ``asyncrl eval CHECKPOINT``: evaluate a saved model and write a report ---------------------

REPORT = "eval_report.json"
EXAMPLES = "eval_examples.jsonl"


def resolve_checkpoint(checkpoint: str) -> tuple[str, "Path | None"]:
    """CHECKPOINT -> (model path for ``load_model``, the run's checkpoint folder or None).

    Accepts a ``save_pretrained`` folder, a run checkpoint folder (``<run>/checkpoints/step_N``), a
    run folder (its latest checkpoint) or a ``.gguf`` file; anything else is a one-line ValueError.
    """
    from pathlib import Path

    from asyncrl.checkpoint import TRAINER_STATE, find_checkpoint
    from asyncrl.policy import resolve_model_path

    p = Path(checkpoint)
    if not p.exists():
        raise ValueError(f"checkpoint not found: {checkpoint}")
    if p.is_dir() and (p / "checkpoints" / "latest").is_file():
        p = find_checkpoint(p)
    if p.is_dir() and not (p / "config.json").is_file():
        raise ValueError(f"{checkpoint} is not a model folder (no config.json), a run folder or a .gguf file")
    path = resolve_model_path(str(p), "")  # checks the .gguf suffix of a file
    return path, (p if p.is_dir() and (p / TRAINER_STATE).is_file() else None)


def eval_config(checkpoint: str, overrides: dict):
    """The config for ``asyncrl eval``: a run checkpoint's own ``config.yaml`` (same task, template,
    max_new_tokens, ...) when it has one, then the command-line flags; ``model`` = the checkpoint."""
    from pathlib import Path

    from asyncrl.config import ConfigError, load_config

    path, run_ckpt = resolve_checkpoint(checkpoint)
    base = run_ckpt / "config.yaml" if run_ckpt is not None and (run_ckpt / "config.yaml").is_file() else None
    if base is None and "task" not in overrides:
        raise ConfigError(f"pass --task NAME: {checkpoint} has no run config.yaml to take the task from")
    cfg = load_config(base, {**overrides, "model": path, "resume": None, "output_dir": overrides.get("output_dir")})
    if cfg.output_dir is None:
        if run_ckpt is not None and run_ckpt.parent.name == "checkpoints":
            # Beside the run's other results, not inside the (atomically written) checkpoint folder.
            cfg.output_dir = str(run_ckpt.parent.parent / "eval" / f"{run_ckpt.name}-{cfg.task}")
        else:
            cfg.output_dir = f"eval-{cfg.task}-{Path(path).stem}"
    return cfg


def _json_number(v):
    return None if isinstance(v, float) and v != v else v


def eval_checkpoint(cfg) -> dict:
    """Greedy evaluation of ``cfg.model`` on ``cfg.task``; writes ``<output_dir>/eval_report.json``
    (metrics, ``n``, the settings that shaped the numbers) and ``eval_examples.jsonl`` (one row per
    example), each atomically. Returns the report."""
    import json
    import time
    from pathlib import Path

    from asyncrl.io import atomic_write_text
    from asyncrl.policy import load_model, load_tokenizer, resolve_device
    from asyncrl.tasks import make_task

    task = make_task(cfg)  # first: bad task settings fail before the model is loaded
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, device).eval()
    t0 = time.perf_counter()
    metrics, rows = evaluate(model, tokenizer, task, max_new_tokens=cfg.max_new_tokens, limit=cfg.eval_limit,
                             chat_template=cfg.chat_template)
    settings = ["task", "model", "max_new_tokens", "chat_template", "prompt_template", "eval_limit", "device"]
    settings += {"gsm8k": ["gsm8k_data"],
                 "custom": ["prompts", "eval_prompts", "prompt_field", "reward", "reward_errors"]}.get(cfg.task, [])
    report = {
        "task": cfg.task,
        "checkpoint": cfg.model,
        **{k: _json_number(v) for k, v in metrics.items()},
        "n": len(rows),
        "eval_time_s": time.perf_counter() - t0,
        "examples": EXAMPLES,
        "config": {k: getattr(cfg, k) for k in settings},
    }
    out = Path(cfg.output_dir)
    atomic_write_text(out / EXAMPLES, "".join(json.dumps({k: _json_number(v) for k, v in r.items()}) + "\n"
                                              for r in rows))
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")  # last: its presence marks a full eval
    return report
