"""Shared inputs and helpers for the pure loss functions.

Layout contract: a learner batch holds B prompts with K samples each, flattened prompt-major to
N = B*K rows, so rows ``g*K .. g*K+K-1`` are the K samples of prompt ``g``. Every loss returns a
mean over sequences (or over groups, which is the same for fixed K), so the learner can split a
batch into micro-batches of whole groups and weight each by its share of groups: the accumulated
gradient equals the full-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LossInputs:
    logp: Tensor  # [N, T] per-token log-probs of completion tokens under the current policy (grad)
    mask: Tensor  # [N, T] float, 1.0 on completion tokens, 0.0 on padding
    behaviour_logp: Tensor  # [N, T] log-probs under the policy that generated the samples (no grad)
    rewards: Tensor  # [N] task reward per sequence
    group_size: int  # K; N must be a multiple of K
    ref_logp: Tensor | None = None  # [N, T] frozen reference policy log-probs (no grad); None = 0
    values: Tensor | None = None  # [N, T] value-head predictions V(s_t) before token t (ppo only)

    @property
    def num_groups(self) -> int:
        return self.rewards.shape[0] // self.group_size

    def ref_or_zeros(self) -> Tensor:  # [N, T]
        return self.ref_logp if self.ref_logp is not None else torch.zeros_like(self.logp)


def seq_sum(x: Tensor, mask: Tensor) -> Tensor:
    """[N, T] -> [N]: sum over completion tokens."""
    return (x * mask).sum(dim=-1)


def seq_mean(x: Tensor, mask: Tensor) -> Tensor:
    """[N, T] -> [N]: mean over completion tokens (empty completions give 0)."""
    return (x * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def grouped(x: Tensor, group_size: int) -> Tensor:
    """[N] -> [B, K]."""
    if x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} rows are not a whole number of groups of {group_size}")
    return x.view(-1, group_size)


def require_group_size(inp: LossInputs, minimum: int, loss: str) -> int:
    """Return K, raising when a group-relative loss gets groups too small to compare within."""
    if inp.group_size < minimum:
        raise ValueError(f"{loss} needs group_size >= {minimum}, got {inp.group_size}")
    return inp.group_size


def masked_mean(x: Tensor, mask: Tensor) -> float:
    """[N, T] -> float: mean over all completion tokens of the batch, for metrics only."""
    return float((x.detach() * mask).sum() / mask.sum().clamp(min=1.0))
