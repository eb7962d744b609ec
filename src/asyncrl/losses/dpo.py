"""Online DPO: Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", as run
asynchronously by Noukhovitch et al. (ICLR 2025), "Asynchronous RLHF".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from asyncrl.losses.common import LossInputs, grouped, require_group_size, seq_sum

DPO_VARIANTS = ("sigmoid", "ipo")


def online_dpo_loss(
    inp: LossInputs, *, beta: float, variant: str = "sigmoid"
) -> tuple[Tensor, dict[str, float]]:
    """Online DPO on one (chosen, rejected) pair per prompt group.

    Per group g: ``c = argmax_k r_gk``, ``rj = argmin_k r_gk`` (first index on ties), with
    sequence log-probs summed over completion tokens::

        h_g = (logpi_c - logpi_rj) - (logref_c - logref_rj)
        sigmoid (Rafailov et al. 2023):  l_g = -log sigmoid(beta * h_g)
        ipo     (Azar et al. 2023):      l_g = (h_g - 1 / (2 beta))^2
        loss = sum_{g valid} l_g / B

    A group is valid when ``max r > min r``. Groups with all-equal rewards carry no preference and
    contribute 0, but still count in the denominator ``B`` so that micro-batches of whole groups
    weighted by their group share reproduce the full-batch loss exactly (dividing by the number of
    valid pairs would not). The seed's vLLM trainer keeps tied groups instead: there chosen and
    rejected are the same sample, so h = 0 and each adds the constant log 2 (sigmoid); loss values
    differ by log 2 times the tied share of groups, gradients are equal. Departures: the paper uses the K=2 case; with K>2 we keep only the
    best/worst pair, and the other samples get no gradient. IPO uses summed (not TRL's
    length-averaged) log-probs, matching Azar et al.'s sequence-level definition. Like the paper,
    the loss ignores ``behaviour_logp`` (DPO is off-policy in form).
    """
    if variant not in DPO_VARIANTS:
        raise ValueError(f"unknown online DPO variant {variant!r}; expected one of {DPO_VARIANTS}")
    if beta <= 0:
        raise ValueError(f"online DPO beta must be > 0, got {beta}")
    k = require_group_size(inp, 2, "online DPO")
    rewards = grouped(inp.rewards, k)  # [B, K]
    logratio = grouped(seq_sum(inp.logp - inp.ref_or_zeros(), inp.mask), k)  # [B, K]
    chosen = rewards.argmax(dim=1, keepdim=True)  # [B, 1]
    rejected = rewards.argmin(dim=1, keepdim=True)  # [B, 1]
    r_gap = (rewards.gather(1, chosen) - rewards.gather(1, rejected)).squeeze(1)  # [B]
    valid = r_gap > 0  # [B]
    h = (logratio.gather(1, chosen) - logratio.gather(1, rejected)).squeeze(1)  # [B]
    if variant == "sigmoid":
        per_group = -F.logsigmoid(beta * h)  # [B]
    else:
        per_group = (h - 1.0 / (2.0 * beta)).pow(2)  # [B]
    # where() rather than a product so an invalid group can never leak inf/nan into the sum
    loss = torch.where(valid, per_group, torch.zeros_like(per_group)).sum() / rewards.shape[0]

    n_valid = int(valid.sum())
    with torch.no_grad():
        implicit_c = beta * logratio.gather(1, chosen).squeeze(1)[valid]  # [n_valid]
        implicit_r = beta * logratio.gather(1, rejected).squeeze(1)[valid]  # [n_valid]

    def _mean(x: Tensor) -> float:
        return float(x.mean()) if n_valid else 0.0

    metrics = {
        "pair_fraction": n_valid / rewards.shape[0],
        # implicit reward margin beta*h over valid pairs (the quantity the loss pushes up)
        "reward_margin": _mean(implicit_c - implicit_r),
        "chosen_rewards_implicit": _mean(implicit_c),
        "rejected_rewards_implicit": _mean(implicit_r),
        "pair_accuracy": _mean((implicit_c > implicit_r).float()),
        "task_reward_gap": _mean(r_gap[valid]),
    }
    return loss, metrics
