"""The one place where the configured algorithm becomes a loss function: :data:`BUILDERS`, one
builder per ``loss``, each reading only the Config fields that config.FIELD_RULES lets it read."""

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
    """``cfg.correction`` (``off_policy_correction`` with ``auto`` resolved) with its thresholds.
    ``ratio_vs_behaviour``: the loss's own ratio already divides by the behaviour policy, so only
    the correction's mask is applied (corrections.py, ``weighted=False``)."""
    thresholds = {arg: getattr(cfg, field) for arg, field in PARAM_FIELDS.items()}
    return make_correction(cfg.correction, weighted=not ratio_vs_behaviour, **thresholds)


def _tb(cfg: Config) -> LossFn:
    def fn(inp: LossInputs, step: int):
        beta = linear_schedule(cfg.beta, cfg.beta_end, step, cfg.steps)
        loss, m = tb_loss(inp, beta=beta)
        return loss, {**m, "beta": beta}

    return fn


def _online_dpo(cfg: Config) -> LossFn:
    return lambda inp, step: online_dpo_loss(inp, beta=cfg.beta, variant=cfg.variant)


def _rloo(cfg: Config) -> LossFn:
    clip = cfg.clip_eps if cfg.rloo_clip else None
    correction = correction_of(cfg, ratio_vs_behaviour=cfg.rloo_clip)
    return lambda inp, step: rloo_loss(inp, kl_coef=cfg.kl_coef, clip_eps=clip, correction=correction)


def _grpo(cfg: Config) -> LossFn:
    correction = correction_of(cfg, ratio_vs_behaviour=False)
    return lambda inp, step: grpo_loss(
        inp, variant=cfg.variant, clip_eps=cfg.clip_eps, correction=correction,
        kl_coef=cfg.kl_coef, max_tokens=cfg.max_new_tokens, clip_ratio_c=cfg.clip_ratio_c,
        decoupled=cfg.decoupled, kl_bias_correction=cfg.kl_bias_correction,
    )


def _ppo(cfg: Config) -> LossFn:
    correction = correction_of(cfg, ratio_vs_behaviour=not cfg.decoupled)
    return lambda inp, step: ppo_loss(
        inp, kl_coef=cfg.kl_coef, clip_eps=cfg.clip_eps, vf_coef=cfg.vf_coef,
        gamma=cfg.gamma, lam=cfg.gae_lambda, correction=correction, clip_ratio_c=cfg.clip_ratio_c,
        decoupled=cfg.decoupled,
    )


BUILDERS: dict[str, Callable[[Config], LossFn]] = {
    "tb": _tb, "online_dpo": _online_dpo, "rloo": _rloo, "grpo": _grpo, "ppo": _ppo,
}


def make_loss(cfg: Config) -> LossFn:
    builder = BUILDERS.get(cfg.loss)
    if builder is None:
        raise ValueError(f"unknown loss {cfg.loss!r}; expected one of {', '.join(BUILDERS)}")
    return builder(cfg)
