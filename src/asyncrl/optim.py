"""The optimizer and learning-rate schedule every training command uses (the RL learner, sft, rm)."""

from __future__ import annotations

import math

import torch

from asyncrl.config import Config


def lr_lambda(cfg: Config):
    """The LR factor per optimizer step. ``steps`` and ``warmup_steps`` count learner steps; with
    several optimizer steps per learner step (``updates_per_step``) the schedule runs over
    optimizer steps, stretched by that factor."""
    per = getattr(cfg, "updates_per_step", 1)  # sft/rm: one optimizer step per step
    warmup, total = cfg.optimizer.warmup_steps * per, cfg.steps * per

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.optimizer.lr_schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.optimizer.lr_schedule == "linear":
            return 1.0 - frac
        return 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def make_optimizer(params, cfg: Config):
    """AdamW with linear warmup then the configured decay; shared by every training command."""
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
