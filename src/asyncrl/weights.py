"""Weight snapshots: what the learner hands to every weight transport (``runtime/transport.py``)."""

from __future__ import annotations

import torch
from torch import Tensor


def snapshot(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """A CPU copy of ``model.state_dict()``, floating tensors cast to ``dtype``.

    Tensors that share storage in the model (tied input and output embeddings) are copied once
    and appear under every name as the same tensor object, so pickling, ``ray.put`` and the
    broadcast move them once (SmolLM2-135M: 538 MB of distinct fp32 weights instead of 651 MB).
    """
    out: dict[str, Tensor] = {}
    seen: dict[tuple[int, int, tuple, str], Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), str(t.device))
        if key not in seen:
            seen[key] = t.to("cpu", dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
        out[name] = seen[key]
    return out


def distinct_bytes(state: dict[str, Tensor]) -> int:
    """Bytes a transport moves for ``state``: each distinct tensor once."""
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in state.values()}.values())
