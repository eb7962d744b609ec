"""Greedy evaluation of a policy on a task's fixed eval set (pass@1 with greedy decoding).

The same function serves periodic evaluation during training (``eval.jsonl``) and ``asyncrl eval``.

Beyond the task's own metrics, a task that sets ``wants_kl = True`` (``reward_model``) or a run with
a ``length_penalty`` / ``missing_eos_penalty`` also gets, computed here for any task:

* ``completion_tokens_mean`` (EOS not counted) and ``missing_eos_rate``; per row ``completion_tokens``
  and ``finished``; with a penalty on, ``shaped_reward_mean`` = mean over scored rows of
  ``reward - length_penalty * tokens - missing_eos_penalty * (no EOS)`` (what training optimises);
* with ``wants_kl`` and a reference model: ``kl_ref`` = mean over prompts of the sequence log-ratio
  sum_t [log pi(y_t) - log ref(y_t)] of the greedy completion (temperature 1, EOS included; a
  plug-in estimate on greedy rather than sampled completions), per row ``kl_ref``; and
  ``ref_perplexity`` = exp(-mean log ref(y_t) over all completion tokens).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import yaml

from asyncrl.checkpoint import TRAINER_STATE, find_checkpoint
from asyncrl.config import ConfigError, load_config
from asyncrl.engines import engine_context, make_engine
from asyncrl.config import flat_name, leaf_values
from asyncrl.engines.base import Engine
from asyncrl.engines.hf import HFEngine
from asyncrl.io import atomic_write_text
from asyncrl.policy import (
    completion_logprobs, encode_prompts, load_model, load_tokenizer, pack, resolve_device, resolve_model_path,
)
from asyncrl.rewards import completion_tokens, shaped_reward
from asyncrl.envs import Environment, is_environment, make_task
from asyncrl.rollout import Limits, ObservationRenderer, episode_limits, run_episodes
from asyncrl.tasks import check_prompt_lengths
from asyncrl.tasks.base import Task


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, *, max_new_tokens: int, limit: int | None = None,
             chat_template: str = "auto", batch_size: int = 64, ref_model=None, length_penalty: float = 0.0,
             missing_eos_penalty: float = 0.0, engine: Engine | None = None,
             limits: Limits | None = None, reward_errors: str = "stop") -> tuple[dict[str, float], list[dict]]:
    """Returns (the task's metrics, e.g. ``accuracy``; one row per example) over the first ``limit``
    eval prompts (all when None). ``ref_model`` is used only when the task sets ``wants_kl``.

    ``engine`` generates (``engines.make_engine``; it must hold ``model``'s weights); None = the
    ``hf`` engine on ``model`` itself. ``model`` scores the completions for ``kl_ref`` and may be
    None when the task does not want KL. An environment (``--task env``) runs greedy episodes within
    ``limits`` (:func:`evaluate_episodes`); ``reward_errors`` decides for its errors."""
    was_training = model.training if model is not None else False
    if engine is None:
        engine = _hf_engine(model, tokenizer, max_new_tokens)
    prompts = task.eval_prompts()[:limit] if limit else task.eval_prompts()
    if is_environment(task):
        try:
            return evaluate_episodes(engine, task, tokenizer, prompts, chat_template=chat_template,
                                     batch_size=batch_size, limits=limits, reward_errors=reward_errors)
        finally:
            if model is not None:
                model.train(was_training)
    wants_kl = bool(getattr(task, "wants_kl", False))
    texts: list[str] = []
    prompt_ids: list[list[int]] = []
    comps = []
    kl = None
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            ids = encode_prompts(tokenizer, [p.model_input for p in chunk], chat_template)
            out = engine.generate(ids, k=1, greedy=True)
            texts += [tokenizer.decode(g[0].ids, skip_special_tokens=True) for g in out]
            prompt_ids += ids
            comps += [g[0] for g in out]
        if wants_kl and ref_model is not None and comps:
            kl = reference_stats(model, ref_model, tokenizer.pad_token_id, prompt_ids, [c.ids for c in comps],
                                 batch_size)
    finally:
        if model is not None:
            model.train(was_training)
    if getattr(task, "takes_reward_context", False):  # the custom task: TRL reward functions get completion_ids
        metrics, rows = task.evaluate(prompts, texts, completion_ids=[c.ids for c in comps])
    else:
        metrics, rows = task.evaluate(prompts, texts)
    if wants_kl or length_penalty or missing_eos_penalty:
        _completion_stats(metrics, rows, comps, length_penalty, missing_eos_penalty)
    if kl is not None:
        per_row, ref_logp_sum, n_tokens = kl
        metrics["kl_ref"] = sum(per_row) / len(per_row)
        metrics["ref_perplexity"] = math.exp(-ref_logp_sum / n_tokens)
        for row, v in zip(rows, per_row):
            row["kl_ref"] = v
    return metrics, rows


def limits_of(cfg, task, model_path: str | None) -> Limits | None:
    """The episode limits of ``cfg``'s environment (``--max-turns``, ``--max-episode-tokens``, the
    context of the evaluation engine on the model at ``model_path``); None for a task."""
    if not is_environment(task):
        return None
    context = engine_context(cfg, model_path, cfg.engine.eval_engine or cfg.engine.name) if model_path else None
    return episode_limits(task, getattr(cfg.task, "max_turns", None), getattr(cfg.task, "max_episode_tokens", None),
                          context, cfg.sampling.max_new_tokens)


def evaluate_episodes(engine: Engine, env, tokenizer, prompts, *, chat_template: str, batch_size: int,
                      limits: Limits | None, reward_errors: str = "stop") -> tuple[dict[str, float], list[dict]]:
    """Greedy episodes of ``env`` from ``prompts``: the environment's metrics (its ``evaluate``:
    reward_mean, accuracy, turns_mean, truncated_share by default) and one row per episode. An
    environment error stops the evaluation with one line (``reward_errors`` ``stop``) or is the
    row's ``error`` (``skip``: evaluation goes on, the row left out of the means)."""
    limits = limits or episode_limits(env, None, None)
    renderer = ObservationRenderer(tokenizer, chat_template)
    rows = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        ids = encode_prompts(tokenizer, [p.model_input for p in chunk], chat_template)
        for e in run_episodes(engine, env, tokenizer, chunk, ids, 1, limits=limits, renderer=renderer,
                              reward_errors=reward_errors, greedy=True):
            rows.append({"prompt_id": e.prompt.prompt_id, "prompt": e.prompt.text,
                         "completion": tokenizer.decode(e.ids, skip_special_tokens=False), "turns": e.turns,
                         "truncated": e.truncated, "reward": None if e.error else e.reward,
                         **({"error": e.error} if e.error else {})})
    metrics = dict(env.evaluate(rows)) if hasattr(env, "evaluate") else Environment.evaluate(env, rows)
    metrics["reward_errors"] = float(sum(r.get("error") is not None for r in rows))
    return metrics, rows


def _completion_stats(metrics: dict, rows: list[dict], comps, length_penalty: float,
                      missing_eos_penalty: float) -> None:
    n = max(1, len(comps))
    toks = [completion_tokens(c.ids, c.finished) for c in comps]
    metrics["completion_tokens_mean"] = sum(toks) / n
    metrics["missing_eos_rate"] = sum(not c.finished for c in comps) / n
    shaped = []
    for row, c, t in zip(rows, comps, toks):
        row["completion_tokens"], row["finished"] = t, c.finished
        r = row.get("reward")
        if isinstance(r, (int, float)) and not isinstance(r, bool) and r == r:
            shaped.append(shaped_reward(float(r), t, c.finished, length_penalty, missing_eos_penalty))
    if length_penalty or missing_eos_penalty:
        metrics["shaped_reward_mean"] = sum(shaped) / len(shaped) if shaped else float("nan")


@torch.no_grad()
def sampled_kl(model, ref_model, tokenizer, prompts: list[str], *, samples_per_prompt: int, max_new_tokens: int,
               chat_template: str = "auto", batch_size: int = 64, engine: Engine | None = None) -> float:
    """Monte-Carlo estimate of the sequence-level KL(pi || ref) = E_{y~pi}[sum_t log pi(y_t) - log ref(y_t)]
    from ``samples_per_prompt`` completions per prompt sampled from ``model`` at temperature 1 (EOS
    included, as in training); the mean over all samples. Unbiased, unlike the greedy plug-in
    ``kl_ref`` of :func:`evaluate` or the training log's ``kl``, which scores stale behaviour samples."""
    was_training = model.training
    if engine is None:  # else it must hold model's weights and sample at temperature 1
        engine = _hf_engine(model, tokenizer, max_new_tokens)
    prompt_ids: list[list[int]] = []
    comp_ids: list[list[int]] = []
    try:
        for i in range(0, len(prompts), batch_size):
            ids = encode_prompts(tokenizer, prompts[i : i + batch_size], chat_template)
            for p, group in zip(ids, engine.generate(ids, k=samples_per_prompt)):
                for c in group:
                    prompt_ids.append(p)
                    comp_ids.append(c.ids)
        per_row, _, _ = reference_stats(model, ref_model, tokenizer.pad_token_id, prompt_ids, comp_ids, batch_size)
    finally:
        model.train(was_training)
    return sum(per_row) / len(per_row)


def _hf_engine(model, tokenizer, max_new_tokens: int) -> Engine:
    return HFEngine(model, tokenizer, max_new_tokens=max_new_tokens, temperature=1.0)


@torch.no_grad()
def reference_stats(model, ref_model, pad_id: int, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                    batch_size: int = 64) -> tuple[list[float], float, int]:
    """(per-sequence sum of log pi - log ref, total log ref over all tokens, token count), temperature 1."""
    per_row: list[float] = []
    ref_sum, n_tokens = 0.0, 0
    dev, ref_dev = next(model.parameters()).device, next(ref_model.parameters()).device
    for i in range(0, len(prompt_ids), batch_size):
        batch = pack(prompt_ids[i : i + batch_size], completion_ids[i : i + batch_size], pad_id)
        mask = batch.completion_mask
        lp = completion_logprobs(model, batch.to(dev), 1.0).float().cpu()
        lr = completion_logprobs(ref_model, batch.to(ref_dev), 1.0).float().cpu()
        per_row += ((lp - lr) * mask).sum(-1).tolist()
        ref_sum += float((lr * mask).sum())
        n_tokens += int(mask.sum())
    return per_row, ref_sum, max(1, n_tokens)


# --- ``asyncrl eval CHECKPOINT``: evaluate a saved model and write a report ---------------------

REPORT = "eval_report.json"
EXAMPLES = "eval_examples.jsonl"


def resolve_checkpoint(checkpoint: str) -> tuple[str, Path | None]:
    """CHECKPOINT -> (model path for ``load_model``, the run's checkpoint folder or None).

    Accepts a ``save_pretrained`` folder, a run checkpoint folder (``<run>/checkpoints/step_N``), a
    run folder (its latest checkpoint) or a ``.gguf`` file; anything else is a one-line ValueError.
    """
    p = Path(checkpoint)
    if not p.exists():
        raise ValueError(f"checkpoint not found: {checkpoint}")
    if p.is_dir() and (p / "checkpoints" / "latest").is_file():
        p = find_checkpoint(p)
    if p.is_dir() and not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        raise ValueError(f"{checkpoint} is not a model folder (no config.json), a run folder or a .gguf file")
    path = resolve_model_path(str(p), "")  # checks the .gguf suffix of a file
    return path, (p if p.is_dir() and (p / TRAINER_STATE).is_file() else None)


def eval_config(checkpoint: str, overrides: dict):
    """The config for ``asyncrl eval``: a run checkpoint's own ``config.yaml`` (same task, template,
    max_new_tokens, ...) when it has one, then the command-line flags; ``model`` = the checkpoint."""
    path, run_ckpt = resolve_checkpoint(checkpoint)
    base = run_ckpt / "config.yaml" if run_ckpt is not None and (run_ckpt / "config.yaml").is_file() else None
    if base is None and "task" not in overrides:
        raise ConfigError(f"pass --task NAME: {checkpoint} has no run config.yaml to take the task from")
    cfg = load_config(base, {**overrides, "model": path, "output_dir": overrides.get("output_dir")}, command="eval")
    if (base is not None and "reference_model" not in overrides and "reference_model" in type(cfg.task).model_fields
            and cfg.task.reference_model is None):
        # The run's initial policy is the reference of kl_ref / ref_perplexity (tasks with wants_kl).
        run = yaml.safe_load(base.read_text()) or {}
        try:
            run_task = run.get("task", cfg.task.name)  # a kind (flat config.yaml) or a section (nested)
            run_task = run_task.get("name", "arithmetic") if isinstance(run_task, dict) else run_task
            cfg.task.reference_model = resolve_model_path(run.get("model"), run_task)
        except ValueError:  # not reachable from here (a relative path, a moved folder): no KL metrics
            pass
    if cfg.output_dir is None:
        if run_ckpt is not None and run_ckpt.parent.name == "checkpoints":
            # Beside the run's other results, not inside the (atomically written) checkpoint folder.
            cfg.output_dir = str(run_ckpt.parent.parent / "eval" / f"{run_ckpt.name}-{cfg.task.name}")
        else:
            cfg.output_dir = f"eval-{cfg.task.name}-{Path(path).stem}"
    return cfg


def _json_number(v):
    return None if isinstance(v, float) and v != v else v


def eval_checkpoint(cfg) -> dict:
    """Greedy evaluation of ``cfg.model`` on ``cfg.task.name``; writes ``<output_dir>/eval_report.json``
    (metrics, ``n``, the settings that shaped the numbers) and ``eval_examples.jsonl`` (one row per
    example), each atomically. Returns the report."""
    task = make_task(cfg)  # first: bad task settings fail before the model is loaded
    check_prompt_lengths(task, cfg, cfg.model, train=False)
    device = resolve_device(cfg.device)
    ref_path = None
    reference_model = getattr(cfg.task, "reference_model", None)  # tasks with wants_kl have it
    if getattr(task, "wants_kl", False) and reference_model:
        ref_path = resolve_model_path(reference_model, cfg.task.name)
    tokenizer = load_tokenizer(cfg.model)
    engine_name = cfg.engine.eval_engine or cfg.engine.name
    # The hf engine samples with this model; vllm loads its own copy, and the HF model is then
    # needed only to score kl_ref against the reference.
    model = load_model(cfg.model, device).eval() if engine_name == "hf" or ref_path is not None else None
    ref = load_model(ref_path, device).eval() if ref_path is not None else None
    engine = make_engine(cfg, cfg.model, tokenizer, name=engine_name, model=model, temperature=1.0, seed=cfg.seed)
    t0 = time.perf_counter()
    try:
        metrics, rows = evaluate(model, tokenizer, task, max_new_tokens=cfg.sampling.max_new_tokens, limit=cfg.evaluation.eval_limit,
                                 chat_template=cfg.chat_template, ref_model=ref, length_penalty=cfg.rewards.length_penalty,
                                 missing_eos_penalty=cfg.rewards.missing_eos_penalty, engine=engine,
                                 limits=limits_of(cfg, task, cfg.model), reward_errors=cfg.rewards.reward_errors)
    finally:
        engine.close()
    values = leaf_values(cfg)
    settings = ["model", "max_new_tokens", "chat_template", "eval_limit", "device", "engine", "eval_engine"]
    settings += [f for f in ("vllm_dtype", "vllm_max_model_len") if engine_name == "vllm"]
    settings += ["length_penalty", "missing_eos_penalty"] if cfg.rewards.length_penalty or cfg.rewards.missing_eos_penalty else []
    settings += ["reward_errors"] if cfg.task.name == "custom" else []
    # the chosen task's own fields (its section holds exactly what it reads), by flat name
    settings = ["task"] + settings + [flat_name(type(cfg.task), k) for k in type(cfg.task).model_fields
                                      if k not in ("name", "reward")]
    settings = [k for k in dict.fromkeys(settings) if k in values]
    report = {
        "task": cfg.task.name,
        "checkpoint": cfg.model,
        **{k: _json_number(v) for k, v in metrics.items()},
        "n": len(rows),
        "eval_time_s": time.perf_counter() - t0,
        "examples": EXAMPLES,
        "config": {k: values[k] for k in settings},
    }
    out = Path(cfg.output_dir)
    atomic_write_text(out / EXAMPLES, "".join(json.dumps({k: _json_number(v) for k, v in r.items()}) + "\n"
                                              for r in rows))
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")  # last: its presence marks a full eval
    return report
