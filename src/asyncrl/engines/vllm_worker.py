"""Runs inside vLLM's worker (``worker_extension_cls``): the receiving end of a weight update.

Kept apart from ``vllm.py`` because vLLM imports it by name inside its worker; it must import
only what that worker already holds (torch, safetensors) at module level.

Two kinds of update arrive: full state dicts (``asyncrl_load_weights``) and, with LoRA, adapter
factors that are merged here into the base weights (``asyncrl_load_lora``, docs/lora.md).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from asyncrl.engines import vllm_compat


def _aliases(model) -> list[tuple[str, str]]:
    """(name, name of the parameter it shares) for every parameter registered twice, e.g. a
    ``lm_head.weight`` tied to ``model.embed_tokens.weight``."""
    first: dict[int, str] = {}
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out.append((name, first[id(p)]))
        else:
            first[id(p)] = name
    return out


class WeightSync:
    """Mixed into vLLM's worker; called through ``LLM.collective_rpc("asyncrl_load_weights", ...)``."""

    def asyncrl_load_weights(self, items) -> int:
        """Load ``items`` (a list of (Hugging Face name, tensor)) in place; returns how many.

        ``reload_weights`` restores every layer none of whose weights were given to its previous
        kernel tensors. A tied LM head gets no weights of its own (its checkpoint name is skipped
        when embeddings are tied), so it would keep the *old* embedding and silently untie: it is
        tied again to the newly loaded parameter and its kernel re-prepared (the CPU backend
        packs the weight into a GEMM closure at load time).
        """
        model = vllm_compat.worker_model(self)
        aliases = _aliases(model)
        vllm_compat.reload_weights(self, items)
        for name, source in aliases:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            setattr(module, attr, model.get_parameter(source))
            vllm_compat.prepare_module(module)
        return len(items)

    def asyncrl_load_lora(self, modules, lora_alpha: float) -> int:
        """Merge LoRA factors into the base weights and load the merged layers in place.

        ``modules``: a list of (Hugging Face module name, A [r, in], B [out, r]); each targeted
        weight becomes W0 + lora_alpha / r * B @ A (peft's merge, computed in fp32, cast to the
        engine's dtype), where W0 is that module's weight in the base model's checkpoint, read once
        and kept on the worker's device. vLLM's reload fills a layer only when it gets all of its
        tensors (a partial fused layer would be rebuilt with its missing shards uninitialised), so
        every tensor of each touched vLLM layer is sent: the fused siblings' W0 (k_proj when only
        q_proj and v_proj are adapted) and biases included. Layers without an adapter keep their
        weights. Returns how many tensors were loaded.
        """
        model = vllm_compat.worker_model(self)
        packed = vllm_compat.packed_modules(model)
        device = next(model.parameters()).device
        dtype = vllm_compat.worker_dtype(self)
        if not hasattr(self, "_asyncrl_w0"):
            self._asyncrl_w0: dict[str, torch.Tensor] = {}  # checkpoint name -> base tensor
            self._asyncrl_module_tensors: dict[str, list[str]] = {}  # module -> its checkpoint names
        w0 = self._asyncrl_w0
        names: dict[str, None] = {}  # checkpoint tensors to send, in order, grouped by vLLM layer
        for module, _, _ in modules:
            for sibling in fused_group(packed, module):
                if sibling not in self._asyncrl_module_tensors:
                    self._asyncrl_read_base(sibling, device, dtype)
                names.update(dict.fromkeys(self._asyncrl_module_tensors[sibling]))
        factors: dict[str, tuple] = {}  # checkpoint weight name -> (A, B, scaling)
        for module, a, b in modules:
            base = w0[f"{module}.weight"]
            r = a.shape[0]
            # Checked before anything is loaded: a failure half-way through a reload would leave
            # vLLM's layers half rebuilt.
            if base.dim() != 2 or a.dim() != 2 or tuple(b.shape) != (base.shape[0], r) or a.shape[1] != base.shape[1]:
                raise ValueError(f"vllm engine: LoRA factors of {module} (A {tuple(a.shape)}, B {tuple(b.shape)}) "
                                 f"do not fit its weight {tuple(base.shape)} (only nn.Linear targets are supported)")
            factors[f"{module}.weight"] = (a, b, lora_alpha / r)

        def merged(name: str) -> torch.Tensor:
            """W0 + scaling * B @ A in one fused pass (addmm), fp32; one layer at a time, so the
            merged copies never all exist at once."""
            base = w0[name]
            if name not in factors:
                return base
            a, b, scaling = factors[name]
            return torch.addmm(base.float(), b.to(device, torch.float32), a.to(device, torch.float32),
                               alpha=scaling).to(base.dtype)  # [out, in]

        items = ((n, merged(n)) for n in names)
        with _quiet_partial_load():
            vllm_compat.reload_weights(self, items)
        return len(names)

    def _asyncrl_read_base(self, module: str, device, dtype) -> None:
        """Read every checkpoint tensor of ``module`` (``weight``, ``bias``) from the base model's
        safetensors into the W0 cache, once."""
        folder = vllm_compat.worker_model_folder(self)
        if not hasattr(self, "_asyncrl_index"):
            self._asyncrl_index = checkpoint_index(folder)
        names = sorted(n for n in self._asyncrl_index if n.rpartition(".")[0] == module)
        if f"{module}.weight" not in names:
            raise ValueError(f"vllm engine: module {module} has no weight {module}.weight in the base "
                             f"model's safetensors ({folder}); tied or non-linear modules cannot be adapted here")
        for n in names:
            with safe_open(self._asyncrl_index[n], framework="pt") as st:
                t = st.get_tensor(n)
            self._asyncrl_w0[n] = t.to(device, dtype=dtype if t.is_floating_point() else t.dtype)
        self._asyncrl_module_tensors[module] = names

    def asyncrl_lora_base_bytes(self) -> int:
        """Bytes of the W0 cache (the base tensors kept for merging)."""
        return sum(t.numel() * t.element_size() for t in getattr(self, "_asyncrl_w0", {}).values())


@contextlib.contextmanager
def _quiet_partial_load():
    """vLLM's warnings for every layer a partial load leaves alone (by design with LoRA: only the
    targeted layers are sent), silenced for the duration of a LoRA load."""
    loggers = [logging.getLogger(n) for n in vllm_compat.PARTIAL_LOAD_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fused_group(packed: dict[str, list[str]], module: str) -> list[str]:
    """The Hugging Face modules vLLM loads into the same layer as ``module``: its shards when vLLM
    fuses it (``packed_modules_mapping``, e.g. ``...self_attn.q_proj`` -> q/k/v_proj of that
    attention, which vLLM holds as one ``qkv_proj``), else ``[module]``."""
    parent, _, leaf = module.rpartition(".")
    for shards in packed.values():
        if leaf in shards:
            return [f"{parent}.{s}" if parent else s for s in shards]
    return [module]


def checkpoint_index(folder: str) -> dict[str, str]:
    """Tensor name -> ``.safetensors`` file holding it, over every such file of ``folder``."""
    index: dict[str, str] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            index.update((k, str(f)) for k in st.keys())
    return index
