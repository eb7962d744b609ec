"""VarGrad trajectory balance (TB) loss, from TBA: Bartoldson et al. 2025, "Trajectory Balance
with Asynchrony: Decoupling Exploration and Learning for Fast, Scalable LLM Post-Training".
"""

from __future__ import annotations

from torch import Tensor

from asyncrl.losses.common import LossInputs, grouped, require_group_size, seq_sum


def tb_loss(inp: LossInputs, *, beta: float) -> tuple[Tensor, dict[str, float]]:
    """VarGrad trajectory balance towards ``pi*(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta)``.

    Per sequence i of group g (sums over completion tokens)::

        logpi_i  = sum_t logp_it            logref_i = sum_t ref_it
        logZ_g   = stopgrad( mean_{j in g} (r_j / beta - logpi_j + logref_j) )
        res_i    = logZ_g + logpi_i - logref_i - r_i / beta
        loss     = mean_i res_i^2

    TB is off-policy by construction (any sampling distribution with full support gives the same
    fixed point), so ``behaviour_logp`` is not used. Instead of a learned log-partition parameter,
    logZ is the per-prompt VarGrad estimate from the K samples, as in TBA. Because the residuals
    of a group sum to zero, the stop-gradient does not change the gradient (it is
    ``2 res_i / N`` per completion token either way); it only drops the logZ path from the graph,
    which changes second-order terms only.
    """
    if beta <= 0:
        raise ValueError(f"tb beta must be > 0, got {beta}")
    k = require_group_size(inp, 2, "tb")  # with K=1 the residual is identically 0
    logpi = seq_sum(inp.logp, inp.mask)  # [N]
    logref = seq_sum(inp.ref_or_zeros(), inp.mask)  # [N]
    scaled_r = inp.rewards / beta  # [N]
    log_z = grouped((scaled_r - logpi + logref).detach(), k).mean(dim=1, keepdim=True)  # [B, 1]
    residual = log_z + grouped(logpi - logref - scaled_r, k)  # [B, K]
    loss = residual.pow(2).mean()
    metrics = {
        "logZ_mean": float(log_z.mean()),
        "residual_abs_mean": float(residual.detach().abs().mean()),
    }
    return loss, metrics


def linear_schedule(start: float, end: float | None, step: int, total_steps: int) -> float:
    """``start`` at step 0 moving linearly to ``end`` at ``total_steps``, held there after.

    ``end=None`` means a constant ``start``; meant for an optional beta schedule.
    """
    if end is None:
        return start
    if total_steps <= 0:
        return end
    frac = min(max(step / total_steps, 0.0), 1.0)
    return start + (end - start) * frac
