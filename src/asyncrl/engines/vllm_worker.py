"""Runs inside vLLM's worker (``worker_extension_cls``): the receiving end of a weight update.

Kept apart from ``vllm.py`` because vLLM imports it by name inside its worker; it must import
nothing heavy at module level.
"""

from __future__ import annotations


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
        model = self.model_runner.get_model()
        aliases = _aliases(model)
        self.model_runner.reload_weights(weights_iterator=iter(items))
        for name, source in aliases:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            setattr(module, attr, model.get_parameter(source))
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)
        return len(items)
