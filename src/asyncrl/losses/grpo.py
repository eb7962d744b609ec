"""GRPO (Shao et al. 2024, "DeepSeekMath") and Dr. GRPO (Liu et al. 2025, "Understanding
R1-Zero-Like Training: A Critical Perspective"), with truncated importance sampling against the
behaviour policy for asynchronous data (Yao et al. 2025, "Your Efficient RL Framework Secretly
Brings You Off-Policy RL Training").
"""

from __future__ import annotations

import torch
from torch import Tensor

from asyncrl.losses.common import (
    LossInputs,
    grouped,
    masked_mean,
    require_group_size,
    seq_mean,
    seq_sum,
)

GRPO_VARIANTS = ("grpo", "dr_grpo")
_STD_EPS = 1e-4


def grpo_loss(
    inp: LossInputs,
    *,
    variant: str = "grpo",
    clip_eps: float = 0.2,
    is_cap: float | None = 2.0,
    kl_coef: float = 0.0,
    max_tokens: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Group-relative clipped policy gradient.

    Advantage per sequence i of group g (constant)::

        grpo:     A_i = (r_i - mean_g r) / (std_g r + 1e-4)
        dr_grpo:  A_i = r_i - mean_g r

    ``std_g`` is the POPULATION std of the K group rewards (divide by K, ``unbiased=False``):
    it is defined for every K, and it makes the advantages of a two-valued group exactly +-1
    (before eps). TRL uses the sample std (divide by K-1), which only rescales A by
    sqrt((K-1)/K).

    Per completion token t, with ``old = stopgrad(logp)`` (one update per batch)::

        rho_t = exp(logp_t - old_t)            (= 1 in value, carries the gradient)
        w_t   = stopgrad(min(exp(old_t - behaviour_logp_t), is_cap))     (w = 1 if is_cap None)
        k3_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1               (Schulman's k3)
        l_t   = -w_t * min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A) + kl_coef * k3_t
        grpo:     loss = mean_i  (sum_t l_t / |y_i|)
        dr_grpo:  loss = mean_i  (sum_t l_t / max_tokens)

    Departures: the PPO clip is kept for form but never binds, since we take one optimizer step
    per batch (rho = 1); off-policyness is handled instead by the truncated IS weight ``w`` against
    the sampler's own log-probs (TRL's ``vllm_importance_sampling_correction``), which neither
    paper has. GRPO's original loss normalises per sequence (kept for "grpo"); Dr. GRPO divides by
    a constant so long and short answers get the same per-token weight. The per-sequence mean over
    the batch (instead of a batch-wide token mean) keeps micro-batching exact.
    """
    if variant not in GRPO_VARIANTS:
        raise ValueError(f"unknown GRPO variant {variant!r}; expected one of {GRPO_VARIANTS}")
    if variant == "dr_grpo" and (max_tokens is None or max_tokens <= 0):
        raise ValueError("dr_grpo needs max_tokens (the constant generation budget) > 0")
    k = require_group_size(inp, 2, variant)  # a group of one has zero advantage
    mask = inp.mask

    rewards = grouped(inp.rewards, k).detach()  # [B, K]
    centered = rewards - rewards.mean(dim=1, keepdim=True)  # [B, K]
    if variant == "grpo":
        centered = centered / (rewards.std(dim=1, unbiased=False, keepdim=True) + _STD_EPS)
    adv = centered.reshape(-1, 1)  # [N, 1]

    old = inp.logp.detach()  # [N, T]
    rho = torch.exp(inp.logp - old)  # [N, T]
    pg = -torch.minimum(rho * adv, rho.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)  # [N, T]
    if is_cap is None:
        weight = torch.ones_like(old)  # [N, T]
        truncated = torch.zeros_like(old)  # [N, T]
    else:
        # masking the exponent keeps junk log-probs on padding from overflowing into inf * 0
        raw = torch.exp((old - inp.behaviour_logp.detach()) * mask)  # [N, T]
        weight = raw.clamp(max=is_cap)
        truncated = (raw > is_cap).to(old.dtype)
    per_token = weight * pg  # [N, T]

    metrics = {
        "is_weight_mean": masked_mean(weight, mask),
        "is_truncated_fraction": masked_mean(truncated, mask),
        "advantage_abs_mean": float(adv.abs().mean()),
    }
    if kl_coef > 0:
        log_ratio = (inp.ref_or_zeros() - inp.logp) * mask  # [N, T]
        k3 = torch.exp(log_ratio) - log_ratio - 1.0  # [N, T]
        per_token = per_token + kl_coef * k3
        metrics["kl_k3_mean"] = masked_mean(k3, mask)

    if variant == "grpo":
        per_seq = seq_mean(per_token, mask)  # [N]
    else:
        per_seq = seq_sum(per_token, mask) / max_tokens  # [N]
    return per_seq.mean(), metrics
