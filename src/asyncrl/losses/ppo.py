"""PPO for RLHF (Stiennon et al. 2020; Ouyang et al. 2022) as run asynchronously by Noukhovitch
et al. (ICLR 2025), "Asynchronous RLHF: Faster and More Efficient Off-Policy RL for LMs".
"""

from __future__ import annotations

import torch
from torch import Tensor

from asyncrl.losses.common import LossInputs, dual_clip, masked_mean, seq_mean
from asyncrl.losses.corrections import NO_CORRECTION, CorrectionFn


def _last_token_onehot(mask: Tensor) -> Tensor:  # [N, T] -> [N, T]
    """1.0 at the last completion token of each row (all zeros for an empty row)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=mask.dtype)
    last = (mask * positions).argmax(dim=1, keepdim=True)  # [N, 1]
    onehot = torch.zeros_like(mask).scatter_(1, last, 1.0)
    return onehot * mask  # an empty row's argmax 0 lands on padding and is dropped here


@torch.no_grad()
def _gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """[N, T] x3 -> [N, T] GAE advantages over completion tokens; value after the last is 0.

    Padding tokens are skipped (the recursion carries over them), so padding may sit anywhere.
    """
    adv = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])  # [N]
    next_adv = torch.zeros_like(values[:, 0])  # [N]
    for t in range(values.shape[1] - 1, -1, -1):
        real = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a_t = torch.where(real, delta + gamma * lam * next_adv, torch.zeros_like(delta))
        adv[:, t] = a_t
        next_value = torch.where(real, values[:, t], next_value)
        next_adv = torch.where(real, a_t, next_adv)
    return adv


def ppo_loss(
    inp: LossInputs,
    *,
    kl_coef: float,
    clip_eps: float = 0.2,
    vf_coef: float = 0.1,
    gamma: float = 1.0,
    lam: float = 0.95,
    correction: CorrectionFn = NO_CORRECTION,
    clip_ratio_c: float | None = None,
    decoupled: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """Token-level PPO with a KL-shaped reward, GAE and a value head.

    Per completion token t of sequence i (``beh`` = behaviour_logp, ``V`` = inp.values)::

        rew_t = -kl_coef * (beh_t - ref_t) + [t = last completion token] * r_i
        A_t   = GAE(gamma, lam) of rew with stopgrad(V), V after the last token = 0
        R_t   = A_t + stopgrad(V_t)
        old_t = beh_t, or prox_t when decoupled
        rho_t = exp(logp_t - old_t)
        pg_t  = -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)
        dual-clip (clip_ratio_c = c set, verl's formula): pg_t = min(pg_t, -c A_t) where A_t < 0
        w_t   = correction(stopgrad(logp), beh)_t, or correction(prox, beh)_t when decoupled
        vf_t  = 0.5 * (V_t - R_t)^2
        loss  = mean_i  mean_{t in y_i} (w_t pg_t + vf_coef * vf_t)

    By default the ratio is taken against the behaviour policy, which is how off-policy (stale)
    samples are corrected, and ``correction`` is ``none`` (w = 1); since rho already divides by
    the behaviour policy, the registry passes a correction's mask alone (``weighted=False``:
    ``token_mask``, ``sequence_mask``, ``geometric_mask``), never a ratio weight. The KL penalty
    is estimated on the sampled tokens under the behaviour policy.

    ``decoupled`` (decoupled PPO, Hilton et al. 2021; AReaL, Fu et al. 2025): the clip's trust
    region is centred on the proximal policy ``inp.prox_logp`` (the weights of the latest sync)
    instead of the possibly many-versions-old behaviour policy, and the behaviour correction
    prox/beh is the separate weight w (by default ``token_tis``: min(prox/beh, is_cap), AReaL's
    ``behav_imp_weight_cap``). With ``sync_every 1`` prox = the current weights, so rho = 1 in
    value and the clip never binds; the loss is then a truncated-IS policy gradient with GAE.
    Departures from the papers: no advantage whitening across the batch (it would couple
    micro-batches and break exact gradient accumulation); no value clipping (one update per
    batch, so there is no previous value estimate to clip around); a per-sequence token mean
    instead of a batch-wide token mean, again for micro-batch invariance.
    """
    if inp.values is None:
        raise ValueError("ppo needs inp.values (value-head predictions)")
    mask = inp.mask
    values = inp.values  # [N, T]
    v_old = values.detach()  # [N, T]
    beh = inp.behaviour_logp.detach()  # [N, T]
    kl = (beh - inp.ref_or_zeros()) * mask  # [N, T]
    token_rewards = -kl_coef * kl + _last_token_onehot(mask) * inp.rewards.detach()[:, None]
    adv = _gae(token_rewards, v_old, mask, gamma, lam)  # [N, T]
    returns = adv + v_old  # [N, T]

    if decoupled and inp.prox_logp is None:
        raise ValueError("decoupled ppo needs inp.prox_logp (proximal-policy log-probs)")
    old = inp.prox_logp.detach() if decoupled else beh  # [N, T]
    # masking the exponent keeps junk log-probs on padding from overflowing into inf * 0
    rho = torch.exp((inp.logp - old) * mask)  # [N, T]
    unclipped = rho * adv
    clipped = rho.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    pg = -torch.minimum(unclipped, clipped)  # [N, T]
    extra = {}
    if clip_ratio_c is not None:
        pg, extra["dual_clip_fraction"] = dual_clip(pg, adv, clip_ratio_c, mask)
    weight, cmetrics = correction(old if decoupled else inp.logp.detach(), beh, mask)  # [N, T]
    pg = weight * pg  # [N, T]
    vf = 0.5 * (values - returns).pow(2)  # [N, T]
    loss = seq_mean(pg + vf_coef * vf, mask).mean()

    metrics = {
        **extra,
        **cmetrics,
        # the clipped branch binds exactly where its gradient is zeroed
        "clip_fraction": masked_mean((clipped < unclipped).to(mask.dtype), mask),
        "policy_loss": float(seq_mean(pg.detach(), mask).mean()),
        "value_loss": float(seq_mean(vf.detach(), mask).mean()),
        "advantage_mean": masked_mean(adv, mask),
        "kl_mean": float(kl.sum(dim=1).mean()),
    }
    return loss, metrics
