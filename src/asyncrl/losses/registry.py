"""The one place where the configured algorithm becomes a loss function."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from asyncrl.config import Config
from asyncrl.losses.common import LossInputs

# (inputs, learner step) -> (scalar loss, metrics)
LossFn = Callable[[LossInputs, int], tuple[Tensor, dict[str, float]]]


def make_loss(cfg: Config) -> LossFn:
    if cfg.loss == "tb":
        from asyncrl.losses.tb import linear_schedule, tb_loss

        def fn(inp: LossInputs, step: int):
            beta = linear_schedule(cfg.beta, cfg.beta_end, step, cfg.steps)
            loss, m = tb_loss(inp, beta=beta)
            return loss, {**m, "beta": beta}

        return fn
    if cfg.loss == "online_dpo":
        from asyncrl.losses.dpo import online_dpo_loss

        return lambda inp, step: online_dpo_loss(inp, beta=cfg.beta, variant=cfg.variant)
    if cfg.loss == "rloo":
        from asyncrl.losses.rloo import rloo_loss

        clip = cfg.clip_eps if cfg.rloo_clip else None
        return lambda inp, step: rloo_loss(inp, kl_coef=cfg.kl_coef, clip_eps=clip)
    if cfg.loss == "grpo":
        from asyncrl.losses.grpo import grpo_loss

        return lambda inp, step: grpo_loss(
            inp, variant=cfg.variant, clip_eps=cfg.clip_eps, is_cap=cfg.is_cap,
            kl_coef=cfg.kl_coef, max_tokens=cfg.max_new_tokens,
        )
    if cfg.loss == "ppo":
        from asyncrl.losses.ppo import ppo_loss

        return lambda inp, step: ppo_loss(
            inp, kl_coef=cfg.kl_coef, clip_eps=cfg.clip_eps, vf_coef=cfg.vf_coef,
            gamma=cfg.gamma, lam=cfg.gae_lambda,
        )
    raise ValueError(f"unknown loss {cfg.loss!r}")
