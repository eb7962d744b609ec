"""GRPO (Shao et al. 2024, "DeepSeekMath") and Dr. GRPO (Liu et al. 2025, "Understanding
R1-Zero-Like Training: A Critical Perspective"), with truncated importance sampling against the
behaviour policy for asynchronous data (Yao et al. 2025, "Your Efficient RL Framework Secretly
Brings You Off-Policy RL Training") by default, or any other correction of losses/corrections.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asyncrl.losses.common import (
    LossInputs,
    dual_clip,
    grouped,
    masked_mean,
    require_group_size,
    seq_mean,
    seq_sum,
)
from asyncrl.losses.corrections import DEFAULT_CORRECTION, CorrectionFn

GRPO_VARIANTS = ("grpo", "dr_grpo")
_STD_EPS = 1e-4


def grpo_loss(
    inp: LossInputs,
    *,
    variant: str = "grpo",
    clip_eps: float = 0.2,
    correction: CorrectionFn = DEFAULT_CORRECTION,
    kl_coef: float = 0.0,
    max_tokens: int | None = None,
    clip_ratio_c: float | None = None,
    decoupled: bool = False,
    kl_bias_correction: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """Group-relative clipped policy gradient.

    Advantage per sequence i of group g (constant)::

        grpo:     A_i = (r_i - mean_g r) / (std_g r + 1e-4)
        dr_grpo:  A_i = r_i - mean_g r

    ``std_g`` is the POPULATION std of the K group rewards (divide by K, ``unbiased=False``):
    it is defined for every K, and it makes the advantages of a two-valued group exactly +-1
    (before eps). TRL uses the sample std (divide by K-1), which only rescales A by
    sqrt((K-1)/K).

    Per completion token t, with ``old = stopgrad(logp)`` (one update per batch), or with
    ``old = prox_logp`` when ``decoupled`` (below)::

        rho_t = exp(logp_t - old_t)            (= 1 in value unless decoupled; carries the gradient)
        w_t   = correction(old, behaviour_logp)_t        (losses/corrections.py; default token_tis:
                                                          stopgrad(min(exp(old_t - beh_t), is_cap)))
        pg_t  = -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A)
        dual-clip (clip_ratio_c = c set, verl's formula, Ye et al. 2020):
              pg_t = min(pg_t, -c A)  where A < 0
        k3_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1               (Schulman's k3)
        kl_bias_correction:  k3_t <- rho_t * k3_t                          (TRL's coef_1 * k3)
        l_t   = w_t * pg_t + kl_coef * k3_t
        grpo:     loss = mean_i  (sum_t l_t / |y_i|)
        dr_grpo:  loss = mean_i  (sum_t l_t / max_tokens)

    Departures: the PPO clip is kept for form but never binds, since we take one optimizer step
    per batch (rho = 1); off-policyness is handled instead by the weight ``w`` against the
    sampler's own log-probs, which neither paper has. The default ``token_tis`` is what TRL calls
    ``vllm_importance_sampling_mode="token_truncate"`` (TRL's default mode is ``sequence_mask``).
    GRPO's original loss normalises per sequence (kept for "grpo"); Dr. GRPO divides by
    a constant so long and short answers get the same per-token weight. The per-sequence mean over
    the batch (instead of a batch-wide token mean) keeps micro-batching exact.

    ``decoupled`` (decoupled PPO, Hilton et al. 2021, as AReaL runs it, Fu et al. 2025): the ratio
    is taken against ``inp.prox_logp``, the proximal policy = the weights of the latest sync, and
    the correction weighs prox against behaviour. With ``sync_every 1`` the latest sync is the
    current weights, so prox_logp = stopgrad(logp) and this is exactly the default loss; only with
    ``sync_every > 1`` can rho differ from 1, and only then can the clip and dual-clip bind.

    KL: the default is the plain k3 estimator of DeepSeekMath (TRL 1.10's default too, and this
    loss's behaviour before the option existed). ``kl_bias_correction`` multiplies k3 by the
    ratio rho (TRL 1.16's default ``use_bias_correction_kl=True``, after DeepSeek-V3.2): 1 in
    value, but it adds ``k3_t * grad logp_t`` to the gradient, which makes it the unbiased gradient
    of KL(pi || ref) under samples of pi. The KL term is never multiplied by ``w`` (as in TRL).
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

    if decoupled and inp.prox_logp is None:
        raise ValueError("decoupled grpo needs inp.prox_logp (proximal-policy log-probs)")
    old = inp.prox_logp.detach() if decoupled else inp.logp.detach()  # [N, T]
    # masking the exponent keeps junk log-probs on padding from overflowing (x * 1.0 == x on tokens)
    rho = torch.exp((inp.logp - old) * mask)  # [N, T]
    pg = -torch.minimum(rho * adv, rho.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)  # [N, T]
    metrics = {}
    if clip_ratio_c is not None:
        pg, metrics["dual_clip_fraction"] = dual_clip(pg, adv, clip_ratio_c, mask)
    weight, cmetrics = correction(old, inp.behaviour_logp, mask)  # [N, T]
    per_token = weight * pg  # [N, T]

    metrics.update(cmetrics, advantage_abs_mean=float(adv.abs().mean()))
    if kl_coef > 0:
        log_ratio = (inp.ref_or_zeros() - inp.logp) * mask  # [N, T]
        k3 = torch.exp(log_ratio) - log_ratio - 1.0  # [N, T]
        kl_term = rho * k3 if kl_bias_correction else k3
        per_token = per_token + kl_coef * kl_term
        metrics["kl_k3_mean"] = masked_mean(k3, mask)

    if variant == "grpo":
        per_seq = seq_mean(per_token, mask)  # [N]
    else:
        per_seq = seq_sum(per_token, mask) / max_tokens  # [N]
    return per_seq.mean(), metrics
