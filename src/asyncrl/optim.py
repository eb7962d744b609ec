"""The optimizer and learning-rate schedule every training command uses (the RL learner, sft, rm)."""

from __future__ import annotations

import math

import torch

from asyncrl.config import Config


def lr_lambda(cfg: Config):
    def f(step: int) -> float:
        if cfg.optimizer.warmup_steps and step < cfg.optimizer.warmup_steps:
            return (step + 1) / cfg.optimizer.warmup_steps
        if cfg.optimizer.lr_schedule == "constant":
            return 1.0
        frac = min(1.0, (step - cfg.optimizer.warmup_steps) / max(1, cfg.steps - cfg.optimizer.warmup_steps))
        if cfg.optimizer.lr_schedule == "linear":
            return 1.0 - frac
        return 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def make_optimizer(params, cfg: Config):
    """AdamW with linear warmup then the configured decay; shared by every training command."""
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
