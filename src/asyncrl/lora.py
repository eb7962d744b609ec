"""LoRA through peft: the policy as base + adapter, wherever it lives (docs/lora.md).

With ``lora_rank`` set, every copy of the policy (the learner's and each ``hf`` generator's) is the
frozen base model wrapped by peft (``LoraConfig`` + ``get_peft_model``), built by
:func:`load_policy`; only the adapter tensors change during a run, so only they move:

* **training**: the optimizer gets the parameters that require grad, which peft limits to the
  adapter (plus PPO's value head, which lives in the learner);
* **reference log-probs**: :class:`ReferenceView` runs the same module with the adapter disabled
  (peft's ``disable_adapter()``): the base model, exactly, without a second copy of the weights;
* **weight sync**: :func:`adapter_snapshot` (peft's ``get_peft_model_state_dict``) is the whole
  payload; :func:`load_adapter_state` puts it into an engine's base + adapter model (unmerged, so
  the engine computes exactly what the learner does);
* **checkpoints**: ``PeftModel.save_pretrained`` (``adapter_config.json`` +
  ``adapter_model.safetensors``, loadable by ``PeftModel.from_pretrained(base, folder)``), plus a
  merged plain model in ``merged/`` with ``lora_save_merged`` (:func:`merged_copy`).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from asyncrl.errors import one_line
from asyncrl.policy import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_folder, load_model, resolve_model_path

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "ReferenceView", "adapter_factors", "adapter_snapshot",
           "is_adapter_folder", "is_peft", "load_adapter_state", "load_policy", "lora_config", "merged_copy", "wrap"]

# peft is optional (asyncrl[lora]): imported where an adapter is built or read, never by full fine-tuning.


def is_peft(model) -> bool:
    """A peft-wrapped model. Without peft installed nothing is (full fine-tuning needs no peft)."""
    try:
        from peft import PeftModel  # optional: see the note at the top
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise ValueError("lora_rank needs the peft package: pip install 'asyncrl[lora]'")


def lora_config(cfg, base_path: str):
    """The ``LoraConfig`` of ``cfg`` (``lora_rank``, ``lora_alpha``, ``lora_dropout``,
    ``lora_target_modules``); ``base_path`` is recorded in the saved ``adapter_config.json``."""
    _require_peft()
    from peft import LoraConfig  # optional: see the note at the top

    targets = cfg.lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's shorthand is a string, not a module name
    return LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none",
                      base_model_name_or_path=str(base_path))


def wrap(model, cfg, base_path: str):
    """``model`` (a plain causal LM) -> a peft model with a fresh adapter; only the adapter
    requires grad. A target name the model does not have is a one-line ValueError (peft's)."""
    _require_peft()
    from peft import get_peft_model  # optional: see the note at the top

    try:
        return get_peft_model(model, lora_config(cfg, base_path))
    except ValueError as e:
        raise ValueError(f"lora_target_modules={cfg.lora.target_modules}: {one_line(e, 'first', limit=200)}") from None


def load_policy(cfg, path: str, device: torch.device, dtype: torch.dtype | None = None):
    """The policy at ``path``: ``load_model(path)`` without LoRA; with ``lora_rank``, the run's base
    model (``cfg.model``) wrapped by :func:`wrap`, with the adapter of ``path`` loaded when ``path``
    is an adapter folder (a LoRA checkpoint: resume), else the fresh adapter (B = 0: the policy
    starts equal to the base)."""
    if cfg.lora is None:
        return load_model(path, device, dtype)
    base_path = resolve_model_path(cfg.model, cfg.task.name)
    model = wrap(load_model(base_path, device, dtype), cfg, base_path)
    if is_adapter_folder(path):
        load_adapter_state(model, load_file(str(Path(path) / ADAPTER_WEIGHTS)))
    return model


def adapter_snapshot(model, dtype: torch.dtype, state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """A CPU copy of the adapter tensors only (peft's names, as in ``adapter_model.safetensors``),
    floating tensors cast to ``dtype``: the LoRA weight-sync payload. ``state``: the model's
    parameters by name to take them from (a sharded learner's, gathered) instead of the model."""
    from peft import get_peft_model_state_dict  # optional: see the note at the top

    state = get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=False)
    return {k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype, copy=True)
            for k, v in state.items()}


@torch.no_grad()
def load_adapter_state(model, state: dict[str, Tensor]) -> None:
    """Copy an adapter state (:func:`adapter_snapshot`, or an ``adapter_model.safetensors``) into
    peft ``model`` in place. Every adapter tensor must be given and nothing else: a partial or
    foreign payload is a ValueError, never a silently half-updated policy."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict  # optional: see the note at the top

    want = set(get_peft_model_state_dict(model, save_embedding_layers=False))
    got = set(state)
    if want != got:
        missing, extra = sorted(want - got), sorted(got - want)
        raise ValueError(f"adapter state does not match the model's adapter: {len(missing)} missing "
                         f"(e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})")
    result = set_peft_model_state_dict(model, state)
    if result.unexpected_keys:
        raise ValueError(f"adapter state has tensors the model lacks: {result.unexpected_keys[:3]}")


PEFT_PREFIX = "base_model.model."  # what peft puts before a module's own name in adapter state names


def adapter_factors(state: dict[str, Tensor]) -> list[tuple[str, Tensor, Tensor]]:
    """An adapter state (:func:`adapter_snapshot`, or an ``adapter_model.safetensors``) as
    (module name in the base model, A [r, in], B [out, r]) per adapted module, in the state's order:
    what an engine that merges the adapter itself needs (the ``vllm`` engine). Only LoRA on linear
    layers (``lora_A.weight`` / ``lora_B.weight``) has this form; any other tensor (embedding
    adapters, DoRA magnitudes, ``modules_to_save``) or a module with one factor is a ValueError."""
    a: dict[str, Tensor] = {}
    b: dict[str, Tensor] = {}
    for name, t in state.items():
        stem, _, kind = name.removesuffix(".weight").rpartition(".")
        if not name.startswith(PEFT_PREFIX) or not name.endswith(".weight") or kind not in ("lora_A", "lora_B"):
            raise ValueError(f"adapter tensor {name!r} is not a LoRA factor of a linear layer "
                             "(the vllm engine merges lora_A/lora_B of nn.Linear targets only)")
        (a if kind == "lora_A" else b)[stem.removeprefix(PEFT_PREFIX)] = t
    if set(a) != set(b):
        odd = sorted(set(a) ^ set(b))
        raise ValueError(f"adapter state has {len(odd)} module(s) with only one of lora_A/lora_B (e.g. {odd[0]})")
    return [(m, a[m], b[m]) for m in a]


def merged_copy(model):
    """A plain model with the adapter merged into the weights (W = W0 + alpha/r * B A), built on a
    copy so that the live model stays unmerged (un-merging is not exact in floating point)."""
    return copy.deepcopy(model).merge_and_unload()


class ReferenceView:
    """The base model inside a peft model, for reference log-probs: each call runs ``model`` with the
    adapter disabled, without grad, in eval mode (no dropout), so it equals the base model exactly
    and needs no second copy of the weights.

    It stands where a frozen reference model would (``Learner``, ``Generator``, evaluation's
    ``reference_stats``): it is called like the model and has ``parameters()``; ``eval()`` and
    ``requires_grad_()`` are no-ops, because the module is the trained policy's own and its mode
    and trainable adapter must stay as they are.
    """

    def __init__(self, model):
        if not is_peft(model):
            raise TypeError("ReferenceView needs a peft model (lora_rank set)")
        self.model = model

    def __call__(self, *args, **kwargs):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                return self.model(*args, **kwargs)
        finally:
            self.model.train(was_training)

    def parameters(self):
        return self.model.parameters()

    def eval(self) -> "ReferenceView":
        return self

    def requires_grad_(self, requires_grad: bool = False) -> "ReferenceView":
        return self
