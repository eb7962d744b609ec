"""FSDP2 for the learner (``learner_ranks > 1``): sharding, the batch split, gathering full tensors.

Every rank holds a :class:`asyncrl.learner.Learner` over the same model, wrapped here with
``torch.distributed.fsdp.fully_shard``: one FSDP unit per decoder layer (the classes the model
names in ``_no_split_modules``) and the learner's ``Scorer`` as the root unit (embeddings, final
norm, LM head, tied or not, and PPO's value head). Parameters, gradients and AdamW state are then
split across ranks; a forward all-gathers one layer at a time, a backward reduce-scatters its
gradients (averaged over ranks: the learner scales each rank's loss by the rank count).

On CUDA the units compute in bf16 and reduce gradients in fp32 (``MixedPrecisionPolicy``); the
sharded parameters, the optimizer's master copy, stay fp32. On CPU everything is fp32 (gloo).

Everything here that gathers is a collective: every rank calls it, in the same order (rank 0 is
driven by the controller, the others by :mod:`asyncrl.runtime.learner_ranks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from asyncrl.types import Group


@dataclass
class RankGroup:
    """This process's place among the learner's ranks."""

    rank: int
    world: int
    objects: Any  # a gloo process group for small Python objects (metrics), whatever the data backend

    def sum_metrics(self, loss: float, kl: float, tokens: int, sums: dict[str, float],
                    mismatch: dict[str, float]) -> tuple[float, float, int, dict[str, float], dict[str, float]]:
        """Each rank's sums over its share of the batch -> the sums over the whole batch (every rank
        gets them, so every rank takes the same skip decision)."""
        import torch.distributed as dist  # noqa: PLC0415 - only with ranks

        mine = (loss, kl, tokens, sums, mismatch)
        every: list = [None] * self.world
        dist.all_gather_object(every, mine, group=self.objects)
        out_sums: dict[str, float] = {}
        out_mismatch: dict[str, float] = {}
        for _, _, _, s, m in every:
            for k, v in s.items():
                out_sums[k] = out_sums.get(k, 0.0) + v
            for k, v in m.items():
                out_mismatch[k] = out_mismatch.get(k, 0.0) + v
        return (sum(e[0] for e in every), sum(e[1] for e in every), sum(e[2] for e in every), out_sums,
                out_mismatch)


def group_tokens(group: Group) -> int:
    return sum(len(s.prompt_ids) + len(s.completion_ids) for s in group.samples)


def split_groups_by_tokens(groups: list[Group], world: int) -> list[list[int]]:
    """Prompt-group indices per rank, balanced by tokens (prompt + completion of all K samples).

    Whole groups only (losses compare the K samples of a prompt). Longest group first onto the
    rank with the fewest tokens so far (ties: the lowest rank), so every rank gets at least one
    group when there are at least ``world`` groups. Each rank's indices are in batch order.
    Deterministic: every rank computes the same split from the same batch."""
    if len(groups) < world:
        raise ValueError(f"{len(groups)} prompt groups cannot be split across {world} learner ranks")
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(groups)), key=lambda i: (-group_tokens(groups[i]), i)):
        r = min(range(world), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += group_tokens(groups[i])
    return [sorted(idx) for idx in out]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: modules whose class the model lists in
    ``_no_split_modules`` (transformers' own name for them; a PEFT wrapper's base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(base).__name__} names no decoder layer class (_no_split_modules): cannot shard it")
    return layers


def shard(scorer: torch.nn.Module, group: RankGroup, device: torch.device, cpu_offload: bool = False) -> None:
    """``fully_shard`` each decoder layer of ``scorer.model``, then ``scorer`` itself (the root).
    ``cpu_offload`` (CUDA only): shards, gradients and optimizer state live in host memory."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard  # noqa: PLC0415

    if cpu_offload and device.type != "cuda":
        raise ValueError(f"learner_cpu_offload needs GPU ranks; this learner runs on {device}")
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" else MixedPrecisionPolicy())
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    # Every rank starts from rank 0's weights: each rank keeps its own slice of what it holds, so
    # anything initialised at random (a fresh LoRA adapter's A) would otherwise differ per slice.
    import torch.distributed as dist  # noqa: PLC0415

    with torch.no_grad():
        for t in scorer.state_dict().values():
            dist.broadcast(t, src=0)
    for layer in decoder_layers(scorer.model):
        fully_shard(layer, mp_policy=mp, offload_policy=offload)
    fully_shard(scorer, mp_policy=mp, offload_policy=offload)


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Second names of tied parameters -> the first name (``lm_head.weight`` ->
    ``model.embed_tokens.weight`` when the embeddings are tied), in ``named_parameters`` order."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def full_snapshot(root: torch.nn.Module, model: torch.nn.Module, dtype: torch.dtype, rank: int,
                  keep: set[str] | None = None) -> dict[str, Tensor]:
    """:func:`asyncrl.weights.snapshot` of a sharded ``model`` (inside the FSDP ``root``), one FSDP
    unit (decoder layer) at a time: each unit is all-gathered in one collective (``unshard``), its
    now-whole parameters are copied to CPU in ``dtype`` on rank 0, and it is resharded. No rank
    holds more than its shards, one gathered layer and (rank 0) the snapshot. Tied parameters
    are copied once and appear under every name as the same tensor. Other ranks get ``{}``.
    ``keep``: only these parameter names (a LoRA adapter's), no buffers."""
    from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

    copies: dict[int, Tensor] = {}
    named: dict[str, Tensor] = {}
    for unit in (m for m in root.modules() if isinstance(m, FSDPModule)):
        unit.unshard()
        for name, p in model.named_parameters(remove_duplicate=False):
            if name in named or hasattr(p, "full_tensor") or (keep is not None and name not in keep):
                continue  # done, still sharded (another unit's), or not wanted
            if id(p) not in copies:
                copies[id(p)] = p.detach().to("cpu", dtype=dtype, copy=True) if rank == 0 else p.new_empty(0)
            named[name] = copies[id(p)]
        unit.reshard()
    if rank != 0:
        return {}
    if keep is not None:
        return named
    out: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():  # the model's own order; persistent buffers are not sharded
        out[name] = named[name] if name in named else \
            t.detach().to("cpu", dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
    return out


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions  # noqa: PLC0415

    return StateDictOptions(full_state_dict=True, **kw)


def full_state(scorer: torch.nn.Module) -> dict[str, Tensor]:
    """The scorer's whole (unsharded) state on rank 0's CPU (``model.*``, ``value_head.*``);
    ``{}`` elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict  # noqa: PLC0415

    return get_model_state_dict(scorer, options=_options(cpu_offload=True))


def trainable_names(scorer: torch.nn.Module) -> list[str]:
    """Names of the trained parameters in optimizer order (the learner builds AdamW from them)."""
    return [n for n, p in scorer.named_parameters() if p.requires_grad]


def full_optimizer_state(scorer: torch.nn.Module, optimizer) -> dict:
    """The optimizer's whole state on rank 0, in ``torch.optim.Optimizer.state_dict()``'s own
    form (parameters by index): the same as a one-rank learner's, so a checkpoint resumes on any
    rank count. ``{}`` on other ranks."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict  # noqa: PLC0415

    sd = get_optimizer_state_dict(scorer, optimizer, options=_options(cpu_offload=True))
    if not sd:
        return {}
    index = {n: i for i, n in enumerate(trainable_names(scorer))}
    return {"state": {index[k]: v for k, v in sd["state"].items()},
            "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in sd["param_groups"]]}


def load_optimizer_state(scorer: torch.nn.Module, optimizer, state: dict | None) -> None:
    """Load a one-rank-form optimizer state (rank 0 passes it, others None) into every rank's shards."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict  # noqa: PLC0415

    names = trainable_names(scorer)
    fqn = {}
    if state:
        fqn = {"state": {names[int(i)]: v for i, v in state["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(scorer, optimizer, fqn, options=_options(broadcast_from_rank0=True))


def load_full_state(module: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Every rank passes the same full tensors for (some of) ``module``'s parameters; each keeps its shards."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict  # noqa: PLC0415

    set_model_state_dict(module, state, options=_options(strict=False))
