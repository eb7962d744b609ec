"""The one place where the configured algorithm becomes a loss function: :data:`BUILDERS`, one
builder per ``loss``, each reading its own loss section (config.TbLoss, ..., config.PpoLoss)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from asyncrl.config import Config
from asyncrl.losses.common import LossInputs
from asyncrl.losses.corrections import PARAM_FIELDS, CorrectionFn, make_correction
from asyncrl.losses.dpo import online_dpo_loss
from asyncrl.losses.grpo import grpo_loss
from asyncrl.losses.ppo import ppo_loss
from asyncrl.losses.rloo import rloo_loss
from asyncrl.losses.tb import linear_schedule, tb_loss

# (inputs, learner step) -> (scalar loss, metrics)
LossFn = Callable[[LossInputs, int], tuple[Tensor, dict[str, float]]]


def correction_of(cfg: Config, *, ratio_vs_behaviour: bool) -> CorrectionFn:
    """``cfg.loss.correction`` (``off_policy_correction`` with ``auto`` resolved) with its thresholds.
    ``ratio_vs_behaviour``: the loss's own ratio already divides by the behaviour policy, so only
    the correction's mask is applied (corrections.py, ``weighted=False``)."""
    thresholds = {arg: getattr(cfg.loss, field) for arg, field in PARAM_FIELDS.items()}  # config._Corrected
    return make_correction(cfg.loss.correction, weighted=not ratio_vs_behaviour, **thresholds)


def _tb(cfg: Config) -> LossFn:
    def fn(inp: LossInputs, step: int):
        beta = linear_schedule(cfg.loss.beta, cfg.loss.beta_end, step, cfg.steps)
        loss, m = tb_loss(inp, beta=beta)
        return loss, {**m, "beta": beta}

    return fn


def _online_dpo(cfg: Config) -> LossFn:
    return lambda inp, step: online_dpo_loss(inp, beta=cfg.loss.beta, variant=cfg.loss.variant)


def _rloo(cfg: Config) -> LossFn:
    clip = cfg.loss.clip_eps if cfg.loss.rloo_clip else None
    correction = correction_of(cfg, ratio_vs_behaviour=cfg.loss.rloo_clip)
    return lambda inp, step: rloo_loss(inp, kl_coef=cfg.loss.kl_coef, clip_eps=clip, correction=correction)


def _grpo(cfg: Config) -> LossFn:
    correction = correction_of(cfg, ratio_vs_behaviour=False)
    return lambda inp, step: grpo_loss(
        inp, variant=cfg.loss.variant, clip_eps=cfg.loss.clip_eps, correction=correction,
        kl_coef=cfg.loss.kl_coef, max_tokens=cfg.sampling.max_new_tokens, clip_ratio_c=cfg.loss.clip_ratio_c,
        decoupled=cfg.loss.decoupled, kl_bias_correction=cfg.loss.kl_bias_correction,
    )


def _ppo(cfg: Config) -> LossFn:
    correction = correction_of(cfg, ratio_vs_behaviour=not cfg.loss.decoupled)
    return lambda inp, step: ppo_loss(
        inp, kl_coef=cfg.loss.kl_coef, clip_eps=cfg.loss.clip_eps, vf_coef=cfg.loss.vf_coef,
        gamma=cfg.loss.gamma, lam=cfg.loss.gae_lambda, correction=correction, clip_ratio_c=cfg.loss.clip_ratio_c,
        decoupled=cfg.loss.decoupled,
    )


BUILDERS: dict[str, Callable[[Config], LossFn]] = {
    "tb": _tb, "online_dpo": _online_dpo, "rloo": _rloo, "grpo": _grpo, "ppo": _ppo,
}


def make_loss(cfg: Config) -> LossFn:
    builder = BUILDERS.get(cfg.loss.name)
    if builder is None:
        raise ValueError(f"unknown loss {cfg.loss.name!r}; expected one of {', '.join(BUILDERS)}")
    return builder(cfg)
