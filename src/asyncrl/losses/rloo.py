"""REINFORCE leave-one-out (RLOO): Ahmadian et al. 2024, "Back to Basics: Revisiting
REINFORCE-Style Optimization for Learning from Human Feedback in LLMs".
"""

from __future__ import annotations

import torch
from torch import Tensor

from asyncrl.losses.common import LossInputs, grouped, require_group_size, seq_sum
from asyncrl.losses.corrections import NO_CORRECTION, CorrectionFn


def rloo_loss(
    inp: LossInputs, *, kl_coef: float, clip_eps: float | None, correction: CorrectionFn = NO_CORRECTION
) -> tuple[Tensor, dict[str, float]]:
    """Sequence-level REINFORCE with the leave-one-out baseline of the other K-1 group samples.

    Per sequence i of group g (sums over completion tokens)::

        r'_i  = r_i - kl_coef * sum_t (behaviour_logp_it - ref_it)        (constant)
        A_i   = r'_i - (sum_{j in g} r'_j - r'_i) / (K - 1)
        w_it  = correction(stopgrad(logp), behaviour_logp)_it     (losses/corrections.py; default 1)
        clip_eps None:  l_i = -A_i * sum_t w_it logp_it
        otherwise:      rho_i = exp(logpi_i - logbeh_i)
                        l_i = -w_i * min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i)
        loss = mean_i l_i

    With ``clip_eps`` the ratio already divides by the behaviour policy, so only a sequence-level
    mask makes sense as w_i (``sequence_mask`` / ``geometric_mask`` with ``weighted=False``, the
    registry's choice; config.py refuses the rest): w_i is its value on the sequence's tokens.

    The KL penalty is folded into the reward as in the paper, estimated on the sampled tokens
    under the behaviour policy (the one that produced them). Departure: the paper is on-policy; for
    asynchronous data we optionally add a PPO-style clipped sequence-level importance ratio
    against the behaviour policy (Ahmadian et al. find PPO's clipping rarely active on-policy).
    """
    k = require_group_size(inp, 2, "rloo")  # the leave-one-out baseline needs another sample
    kl = seq_sum(inp.behaviour_logp - inp.ref_or_zeros(), inp.mask)  # [N]
    shaped = grouped((inp.rewards - kl_coef * kl).detach(), k)  # [B, K]
    baseline = (shaped.sum(dim=1, keepdim=True) - shaped) / (k - 1)  # [B, K]
    adv = (shaped - baseline).reshape(-1)  # [N]
    logpi = seq_sum(inp.logp, inp.mask)  # [N]
    weight, cmetrics = correction(inp.logp.detach(), inp.behaviour_logp, inp.mask)  # [N, T]

    metrics = {"advantage_abs_mean": float(adv.abs().mean()), "kl_mean": float(kl.mean()), **cmetrics}
    if clip_eps is None:
        per_seq = -adv * seq_sum(weight * inp.logp, inp.mask)  # [N]
    else:
        rho = torch.exp(logpi - seq_sum(inp.behaviour_logp, inp.mask))  # [N]
        unclipped = rho * adv
        clipped = rho.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
        # a sequence-level weight is constant over the sequence: its value at the first token
        # (1 for an empty completion, whose loss is 0 anyway since logpi = 0)
        seq_weight = weight[:, 0] if weight.shape[1] else torch.ones_like(adv)  # [N]
        per_seq = -seq_weight * torch.minimum(unclipped, clipped)  # [N]
        # the clipped branch binds exactly where its gradient is zeroed
        metrics["clip_fraction"] = float((clipped < unclipped).float().mean())
        metrics["ratio_mean"] = float(rho.detach().mean())
    return per_seq.mean(), metrics
