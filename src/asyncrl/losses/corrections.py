"""Off-policy corrections: per-token weights for the gap between the policy that sampled a
completion (the behaviour policy, whose log-probs the engine returned) and the policy the loss
compares it with (the learner's current weights, or the proximal policy of decoupled PPO).

Every correction is a pure function of tensors::

    correction(target_logp [N, T] (no grad), behaviour_logp [N, T], mask [N, T], *, thresholds,
               weighted) -> (weight [N, T] (no grad), metrics)

with the per-token log-ratio ``log r_t = target_t - behaviour_t``, the sequence log-ratio
``S_i = sum_t log r_it`` over completion tokens and ``|y_i|`` the completion length. The losses
multiply their per-token policy-gradient term by ``weight`` (the KL term is never weighted, as in
TRL). ``weighted=False`` keeps only a correction's 0/1 mask: for losses whose clipped ratio already
divides by the behaviour policy (plain ``ppo``, ``rloo`` with ``rloo_clip``), where a ratio
weight would correct twice; the truncation-only corrections have no mask and are refused there
(config.py).

==================  =============================================  =====================================
name                weight                                         source
==================  =============================================  =====================================
``none``            1                                              (no correction)
``token_tis``       min(r_t, C)                                    Yao et al. 2025 (truncated IS); TRL
                                                                   ``vllm_importance_sampling_mode=
                                                                   token_truncate``; verl token TIS;
                                                                   open-instruct
``token_mask``      r_t * [lo <= r_t <= hi]                        IcePop (Ling team 2025, ratio band
                                                                   [alpha, beta]); TRL ``token_mask``
``sequence_tis``    min(exp(S_i), C), every token of i             TRL ``sequence_truncate``; verl
                                                                   Seq-TIS
``sequence_mask``   exp(S_i) * [exp(S_i) <= C], every token of i   TRL ``sequence_mask`` (TRL's default
                                                                   mode); verl Seq-MIS
``geometric_mask``  [1-d <= exp(S_i/|y_i|) <= 1+d], every token    SkyRL ``sequence_mask_metric=
                                                                   geometric``; verl Geo-RS
==================  =============================================  =====================================

C = ``is_cap``, [lo, hi] = [``is_low``, ``is_high``], d = ``is_geo_delta``. The mask modes follow
their sources in keeping the ratio as the weight of the tokens they keep (TRL, IcePop, Seq-MIS);
the geometric mask is a pure rejection (SkyRL, verl: no IS weight). TRL's lower bound
``vllm_importance_sampling_clip_min`` (default None) is not offered for the sequence modes.

Metrics (means over this batch's completion tokens or sequences): ``is_weight_mean`` (the weight),
``is_clipped_token_fraction`` / ``is_clipped_seq_fraction`` (truncated by the cap: tokens, and
sequences holding at least one), ``is_masked_token_fraction`` / ``is_masked_seq_fraction``
(weight set to 0). A correction is chosen by name in :data:`CORRECTIONS`, the one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor

# (target_logp [N, T], behaviour_logp [N, T], mask [N, T]) -> (weight [N, T], metrics)
CorrectionFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, dict[str, float]]]


def _log_ratio(target_logp: Tensor, behaviour_logp: Tensor, mask: Tensor) -> Tensor:  # [N, T]
    # masking the exponent's input keeps junk log-probs on padding from overflowing into inf * 0
    return (target_logp.detach() - behaviour_logp.detach()) * mask


def _metrics(weight: Tensor, clipped: Tensor, masked: Tensor, mask: Tensor) -> dict[str, float]:
    """weight, clipped, masked: [N, T] (the last two 0/1); mask: [N, T]."""
    tokens = mask.sum().clamp(min=1.0)
    real = mask > 0
    # one device-to-host copy for the five numbers
    vals = torch.stack([
        (weight * mask).sum() / tokens,
        (clipped * mask).sum() / tokens,
        ((clipped * mask).sum(dim=1) > 0).to(mask.dtype).mean(),
        (masked * mask).sum() / tokens,
        ((masked > 0) & real).any(dim=1).to(mask.dtype).mean(),
    ]).tolist()
    keys = ("is_weight_mean", "is_clipped_token_fraction", "is_clipped_seq_fraction",
            "is_masked_token_fraction", "is_masked_seq_fraction")
    return dict(zip(keys, vals))


@torch.no_grad()
def no_correction(target_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, *,
                  weighted: bool = True) -> tuple[Tensor, dict[str, float]]:
    """weight = 1 on every token."""
    weight = torch.ones_like(mask)
    zero = torch.zeros_like(mask)
    return weight, _metrics(weight, zero, zero, mask)


@torch.no_grad()
def token_tis(target_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, *, cap: float | None,
              weighted: bool = True) -> tuple[Tensor, dict[str, float]]:
    """Token truncated IS: weight_t = min(r_t, cap) (Yao et al. 2025; TRL ``token_truncate``).

    ``cap=None`` switches the correction off (weight 1), as ``is_cap: null`` did before
    ``off_policy_correction`` existed. No mask, so ``weighted=False`` is refused by the caller.
    """
    if cap is None:
        return no_correction(target_logp, behaviour_logp, mask)
    raw = torch.exp(_log_ratio(target_logp, behaviour_logp, mask))  # [N, T]
    weight = raw.clamp(max=cap)
    return weight, _metrics(weight, (raw > cap).to(mask.dtype), torch.zeros_like(mask), mask)


@torch.no_grad()
def token_mask(target_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, *, low: float, high: float,
               weighted: bool = True) -> tuple[Tensor, dict[str, float]]:
    """Token masked IS: weight_t = r_t * [low <= r_t <= high] (IcePop; TRL ``token_mask``);
    ``weighted=False``: the indicator alone."""
    raw = torch.exp(_log_ratio(target_logp, behaviour_logp, mask))  # [N, T]
    keep = ((raw >= low) & (raw <= high)).to(mask.dtype)  # [N, T]
    weight = raw * keep if weighted else keep
    return weight, _metrics(weight, torch.zeros_like(mask), 1.0 - keep, mask)


def _sequence_ratio(target_logp: Tensor, behaviour_logp: Tensor, mask: Tensor) -> Tensor:  # [N, 1]
    return torch.exp(_log_ratio(target_logp, behaviour_logp, mask).sum(dim=1, keepdim=True))


@torch.no_grad()
def sequence_tis(target_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, *, cap: float,
                 weighted: bool = True) -> tuple[Tensor, dict[str, float]]:
    """Sequence truncated IS: every token of sequence i gets min(exp(S_i), cap) (TRL
    ``sequence_truncate``; verl Seq-TIS). No mask, so ``weighted=False`` is refused by the caller."""
    raw = _sequence_ratio(target_logp, behaviour_logp, mask).expand_as(mask)  # [N, T]
    weight = raw.clamp(max=cap)
    return weight, _metrics(weight, (raw > cap).to(mask.dtype), torch.zeros_like(mask), mask)


@torch.no_grad()
def sequence_mask(target_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, *, cap: float,
                  weighted: bool = True) -> tuple[Tensor, dict[str, float]]:
    """Sequence masked IS: every token of sequence i gets exp(S_i) * [exp(S_i) <= cap] (TRL
    ``sequence_mask``, TRL's default mode; verl Seq-MIS); ``weighted=False``: the indicator alone."""
    raw = _sequence_ratio(target_logp, behaviour_logp, mask).expand_as(mask)  # [N, T]
    keep = (raw <= cap).to(mask.dtype)
    weight = raw * keep if weighted else keep
    return weight, _metrics(weight, torch.zeros_like(mask), 1.0 - keep, mask)


@torch.no_grad()
def geometric_mask(target_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, *, delta: float,
                   weighted: bool = True) -> tuple[Tensor, dict[str, float]]:
    """Geometric-mean sequence mask: every token of sequence i gets
    [1 - delta <= exp(S_i / |y_i|) <= 1 + delta] (SkyRL ``sequence_mask_metric=geometric``;
    verl Geo-RS). A pure rejection, so ``weighted`` changes nothing. Empty completions have
    ratio 1 and are kept (they carry no tokens anyway)."""
    log_r = _log_ratio(target_logp, behaviour_logp, mask)  # [N, T]
    geo = torch.exp(log_r.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1.0))  # [N, 1]
    keep = ((geo >= 1.0 - delta) & (geo <= 1.0 + delta)).to(mask.dtype).expand_as(mask)  # [N, T]
    weight = keep.clone()
    return weight, _metrics(weight, torch.zeros_like(mask), 1.0 - keep, mask)


@dataclass(frozen=True)
class CorrectionSpec:
    fn: Callable[..., tuple[Tensor, dict[str, float]]]
    params: tuple[str, ...]  # keyword arguments, filled from the Config fields in PARAM_FIELDS
    has_mask: bool  # False: nothing is left with weighted=False (refused for behaviour-ratio losses)


# The one table of corrections (config.py's validator mirrors the has_mask column by name).
CORRECTIONS: dict[str, CorrectionSpec] = {
    "none": CorrectionSpec(no_correction, (), has_mask=False),
    "token_tis": CorrectionSpec(token_tis, ("cap",), has_mask=False),
    "token_mask": CorrectionSpec(token_mask, ("low", "high"), has_mask=True),
    "sequence_tis": CorrectionSpec(sequence_tis, ("cap",), has_mask=False),
    "sequence_mask": CorrectionSpec(sequence_mask, ("cap",), has_mask=True),
    "geometric_mask": CorrectionSpec(geometric_mask, ("delta",), has_mask=True),
}
# keyword argument -> the Config field it comes from
PARAM_FIELDS = {"cap": "is_cap", "low": "is_low", "high": "is_high", "delta": "is_geo_delta"}


def make_correction(name: str, *, weighted: bool = True, **thresholds: float | None) -> CorrectionFn:
    """The correction ``name`` with its thresholds bound (keywords of :data:`PARAM_FIELDS`; extra
    ones are ignored so a caller can pass all four)."""
    spec = CORRECTIONS.get(name)
    if spec is None:
        raise ValueError(f"unknown off_policy_correction {name!r}; expected one of {', '.join(CORRECTIONS)}")
    if not weighted and name != "none" and not spec.has_mask:
        raise ValueError(f"off_policy_correction={name} only reweights, and this loss's ratio already divides "
                         "by the behaviour policy; choose none or a mask")
    return partial(spec.fn, weighted=weighted, **{p: thresholds[p] for p in spec.params})


DEFAULT_CORRECTION: CorrectionFn = make_correction("token_tis", cap=2.0)  # grpo's default (is_cap 2.0)
NO_CORRECTION: CorrectionFn = make_correction("none")
