"""Generation engines, built from the config at one place: :func:`make_engine`.

Generators (``runtime/worker.py``) and evaluation (``evaluation.py``, the controller's periodic
evaluation, ``asyncrl eval``) get their engines here and only ever see the :class:`Engine`
protocol: ``generate`` (K samples per prompt), ``load_weights`` (a versioned in-place update) and
``close``.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from asyncrl.engines.base import Completion, Engine, eos_token_ids
from asyncrl.engines.hf import HFEngine
from asyncrl.engines.vllm import VLLMEngine
from asyncrl.policy import (ADAPTER_WEIGHTS, context_length, is_adapter_folder, load_model, resolve_device,
                            resolve_model_path)

ENGINES = ("hf", "vllm")


def make_engine(cfg, model_path: str, tokenizer, *, name: str | None = None, model=None,
                temperature: float | None = None, seed: int = 0, version: int = 0, generator=None) -> Engine:
    """The engine ``name`` (default ``cfg.engine.name``) for the policy at ``model_path``.

    ``hf`` samples with the given live ``model`` (loaded from ``model_path`` when None), so the
    learner's own model can be evaluated without a copy; ``vllm`` loads ``model_path`` into vLLM
    with the ``vllm_*`` settings. With ``lora_rank`` the ``vllm`` engine takes adapter updates; when
    ``model_path`` is a LoRA checkpoint (resume) it loads the run's base model and that adapter. ``temperature`` defaults to ``cfg.sampling.temperature`` (evaluation
    passes 1.0); ``seed`` seeds the engine's sampler (vllm); ``generator``: the ``torch.Generator``
    the hf engine samples from (None: the process RNG).
    """
    name = name or cfg.engine.name
    temperature = cfg.sampling.temperature if temperature is None else temperature
    device = resolve_device(cfg.device)
    if name == "hf":
        if model is None:
            model = load_model(model_path, device)
        return HFEngine(model, tokenizer, max_new_tokens=cfg.sampling.max_new_tokens, temperature=temperature,
                        version=version, generator=generator)
    if name == "vllm":
        lora = getattr(cfg, "lora", None) is not None  # (asyncrl eval has no lora section)
        base, adapter = model_path, None
        if lora and is_adapter_folder(model_path):
            run_base = resolve_model_path(cfg.model, cfg.task.name)
            # A LoRA checkpoint on the run's base; not the base itself, which may be an adapter
            # folder (a new run from a LoRA checkpoint: merged once, plain_model_folder).
            if Path(run_base).resolve() != Path(model_path).resolve():
                base, adapter = run_base, Path(model_path) / ADAPTER_WEIGHTS
        engine = VLLMEngine(base, tokenizer, max_new_tokens=cfg.sampling.max_new_tokens, temperature=temperature,
                            device=device, dtype=cfg.engine.vllm.dtype, gpu_memory_utilization=cfg.engine.vllm.gpu_memory_utilization,
                            kv_cache_gb=cfg.engine.vllm.kv_cache_gb, max_model_len=cfg.engine.vllm.max_model_len,
                            enforce_eager=cfg.engine.vllm.enforce_eager, seed=seed, version=version,
                            lora_alpha=cfg.lora.alpha if lora else None)
        if adapter is not None:
            try:
                engine.load_weights(load_file(str(adapter)), version)
            except BaseException:
                engine.close()
                raise
        return engine
    raise ValueError(f"unknown engine {name!r}; known engines: {', '.join(ENGINES)}")


__all__ = ["Completion", "ENGINES", "Engine", "eos_token_ids", "make_engine"]


def engine_context(cfg, model_path: str, name: str | None = None) -> int | None:
    """The most tokens (prompt + completion) the generator's engine takes: the model's context, or
    ``vllm_max_model_len`` when that is smaller (vLLM refuses longer requests). ``name``: the
    engine (None = ``cfg.engine.name``; evaluation passes its ``eval_engine``)."""
    ctx = context_length(model_path)
    vllm_len = cfg.engine.vllm.max_model_len if (name or cfg.engine.name) == "vllm" else None
    return min(x for x in (ctx, vllm_len) if x is not None) if (ctx or vllm_len) else None
