"""Loss functions against hand-computed numbers, plus micro-batch invariance and error paths.

Expected values are written out in plain Python floats and ``math`` so they do not share code
with the torch implementation. All tensors are float64 so tolerances can be tight.
"""

from __future__ import annotations

import math

import pytest
import torch

from asyncrl.losses import (
    GROUP_LOSSES,
    MIN_GROUP_SIZE,
    LossInputs,
    grpo_loss,
    linear_schedule,
    online_dpo_loss,
    ppo_loss,
    rloo_loss,
    tb_loss,
)
from asyncrl.losses.corrections import make_correction

from conftest import micro_batch_run

REL = 1e-6
PAD = -9.0  # junk on padding; any leak of it into a loss changes the numbers

# Fixture: N=4 rows, K=2 (groups {0,1} and {2,3}), T=3, row 1 has a padded last token.
LOGP = [[-0.5, -1.0, -0.2], [-0.3, -0.9, PAD], [-1.2, -0.4, -0.6], [-0.8, -0.1, -0.5]]
BEH = [[-0.6, -0.9, -0.3], [-0.2, -0.6, PAD], [-1.0, -0.5, -0.9], [-0.9, -0.3, -0.4]]
REF = [[-0.7, -1.1, -0.1], [-0.4, -0.3, PAD], [-1.1, -0.3, -0.9], [-0.6, -0.2, -0.9]]
MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]]
REWARDS = [1.0, 0.0, 0.5, 2.0]
LENS = [3, 2, 3, 3]
# sequence sums over completion tokens, by hand
LOGPI = [-0.5 - 1.0 - 0.2, -0.3 - 0.9, -1.2 - 0.4 - 0.6, -0.8 - 0.1 - 0.5]  # -1.7 -1.2 -2.2 -1.4
LOGREF = [-0.7 - 1.1 - 0.1, -0.4 - 0.3, -1.1 - 0.3 - 0.9, -0.6 - 0.2 - 0.9]  # -1.9 -0.7 -2.3 -1.7
LOGBEH = [-0.6 - 0.9 - 0.3, -0.2 - 0.6, -1.0 - 0.5 - 0.9, -0.9 - 0.3 - 0.4]  # -1.8 -0.8 -2.4 -1.6


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def make_inputs(k: int = 2, **overrides) -> LossInputs:
    fields = dict(
        logp=t(LOGP).requires_grad_(True),
        mask=t(MASK),
        behaviour_logp=t(BEH),
        rewards=t(REWARDS),
        group_size=k,
        ref_logp=t(REF),
    )
    fields.update(overrides)
    return LossInputs(**fields)


def per_token_grad(rows: list[float]) -> list[list[float]]:
    """Expand one gradient value per row onto that row's completion tokens."""
    return [[g * m for m in mrow] for g, mrow in zip(rows, MASK)]


def assert_close(actual, expected, rel: float = REL) -> None:
    actual_t = torch.as_tensor(actual, dtype=torch.float64)
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual_t, expected_t, rtol=rel, atol=1e-12)


# ---------------------------------------------------------------------------- trajectory balance


def test_tb_matches_hand_computation_and_gradient():
    beta = 0.5
    inp = make_inputs()
    loss, metrics = tb_loss(inp, beta=beta)
    loss.backward()

    # target_i = r_i/beta - logpi_i + logref_i; logZ_g = group mean; res_i = logZ_g - target_i
    target = [REWARDS[i] / beta - LOGPI[i] + LOGREF[i] for i in range(4)]  # 1.8 0.5 0.9 3.7
    log_z = [(target[0] + target[1]) / 2, (target[2] + target[3]) / 2]  # 1.15 2.3
    res = [log_z[i // 2] - target[i] for i in range(4)]  # -0.65 0.65 1.4 -1.4
    assert_close(res, [-0.65, 0.65, 1.4, -1.4])
    assert_close(loss.item(), sum(x * x for x in res) / 4)
    assert_close(loss.item(), 1.19125)
    # dL/dlogp_it = 2 res_i / N on completion tokens
    assert_close(inp.logp.grad, per_token_grad([2 * x / 4 for x in res]))
    assert_close(metrics["logZ_mean"], (1.15 + 2.3) / 2)
    assert_close(metrics["residual_abs_mean"], (0.65 + 0.65 + 1.4 + 1.4) / 4)


def test_tb_logz_is_stop_gradient():
    # Residuals of a group sum to zero, so first-order gradients agree with or without the
    # stop-gradient; the Hessian tells them apart. With logZ detached,
    # d2L / dlogp_00 dlogp_js = 2/N on row 0's tokens only; without it, the group partner (row 1)
    # would get -2/(N K) and row 0 would get 2/N (1 - 1/K).
    inp = make_inputs()
    loss, _ = tb_loss(inp, beta=0.5)
    (grad,) = torch.autograd.grad(loss, inp.logp, create_graph=True)
    (hess_row,) = torch.autograd.grad(grad[0, 0], inp.logp)
    expected = [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert_close(hess_row, expected)


def test_tb_ref_none_means_zero_reference():
    loss, _ = tb_loss(make_inputs(ref_logp=None), beta=1.0)
    target = [REWARDS[i] - LOGPI[i] for i in range(4)]
    res = [(target[2 * (i // 2)] + target[2 * (i // 2) + 1]) / 2 - target[i] for i in range(4)]
    assert_close(loss.item(), sum(x * x for x in res) / 4)


def test_linear_schedule():
    assert linear_schedule(0.3, None, 50, 100) == 0.3
    assert_close(linear_schedule(1.0, 0.2, 0, 100), 1.0)
    assert_close(linear_schedule(1.0, 0.2, 25, 100), 0.8)
    assert_close(linear_schedule(1.0, 0.2, 100, 100), 0.2)
    assert_close(linear_schedule(1.0, 0.2, 250, 100), 0.2)


# ---------------------------------------------------------------------------------- online DPO


def test_dpo_sigmoid_matches_hand_computation_and_gradient():
    beta = 0.5
    inp = make_inputs()
    loss, metrics = online_dpo_loss(inp, beta=beta)
    loss.backward()

    ratio = [LOGPI[i] - LOGREF[i] for i in range(4)]  # 0.2 -0.5 0.1 0.3
    # group 0: rewards (1, 0) -> chosen row 0, rejected row 1
    # group 1: rewards (0.5, 2) -> chosen row 3, rejected row 2
    h0 = ratio[0] - ratio[1]  # 0.7
    h1 = ratio[3] - ratio[2]  # 0.2
    assert_close([h0, h1], [0.7, 0.2])
    expected = (math.log1p(math.exp(-beta * h0)) + math.log1p(math.exp(-beta * h1))) / 2
    assert_close(loss.item(), expected)

    # d/dh [-log sigmoid(beta h)] = -beta * sigmoid(-beta h); divided by B = 2
    def dh(h: float) -> float:
        return -beta / (1.0 + math.exp(beta * h)) / 2

    assert_close(inp.logp.grad, per_token_grad([dh(h0), -dh(h0), -dh(h1), dh(h1)]))
    assert metrics["pair_fraction"] == 1.0
    assert_close(metrics["reward_margin"], beta * (h0 + h1) / 2)
    assert_close(metrics["chosen_rewards_implicit"], beta * (ratio[0] + ratio[3]) / 2)
    assert_close(metrics["rejected_rewards_implicit"], beta * (ratio[1] + ratio[2]) / 2)


def test_dpo_ipo_matches_hand_computation_and_gradient():
    beta = 0.5  # target margin 1 / (2 beta) = 1
    inp = make_inputs()
    loss, _ = online_dpo_loss(inp, beta=beta, variant="ipo")
    loss.backward()
    # h = 0.7 and 0.2: ((0.7 - 1)^2 + (0.2 - 1)^2) / 2
    assert_close(loss.item(), (0.09 + 0.64) / 2)
    # dl/dh = 2 (h - 1) / B = h - 1: -0.3 for group 0, -0.8 for group 1
    assert_close(inp.logp.grad, per_token_grad([-0.3, 0.3, 0.8, -0.8]))


def test_dpo_ties_and_groups_without_preference():
    # K=3. Group 0 rewards (1, 1, 0): chosen must be the FIRST max (row 0), rejected row 2.
    # Group 1 rewards all equal: no pair, contributes 0 but counts in the denominator B=2.
    logp = [[-1.0, -2.0], [-0.5, -0.5], [-3.0, -1.0], [-1.0, -1.0], [-2.0, -2.0], [-0.1, -0.2]]
    inp = LossInputs(
        logp=t(logp).requires_grad_(True),
        mask=torch.ones(6, 2, dtype=torch.float64),
        behaviour_logp=t(logp),
        rewards=t([1.0, 1.0, 0.0, 0.7, 0.7, 0.7]),
        group_size=3,
    )
    beta = 0.1
    loss, metrics = online_dpo_loss(inp, beta=beta)
    loss.backward()
    h = (-1.0 - 2.0) - (-3.0 - 1.0)  # 1.0, no reference
    assert_close(loss.item(), math.log1p(math.exp(-beta * h)) / 2)
    g = -beta / (1.0 + math.exp(beta * h)) / 2
    assert_close(inp.logp.grad, [[g, g], [0.0, 0.0], [-g, -g], [0, 0], [0, 0], [0, 0]])
    assert metrics["pair_fraction"] == 0.5


def test_dpo_all_groups_tied_gives_zero_loss_and_finite_metrics():
    inp = make_inputs(rewards=t([1.0, 1.0, 0.0, 0.0]))
    loss, metrics = online_dpo_loss(inp, beta=0.1)
    assert loss.item() == 0.0
    assert metrics["pair_fraction"] == 0.0
    assert all(math.isfinite(v) for v in metrics.values())


# ------------------------------------------------------------------------------------------ RLOO


def rloo_advantages(kl_coef: float) -> list[float]:
    shaped = [REWARDS[i] - kl_coef * (LOGBEH[i] - LOGREF[i]) for i in range(4)]
    # K = 2: the leave-one-out baseline is the partner's shaped reward
    a0, a1 = shaped[0] - shaped[1], shaped[2] - shaped[3]
    return [a0, -a0, a1, -a1]


def test_rloo_reinforce_matches_hand_computation_and_gradient():
    inp = make_inputs()
    loss, metrics = rloo_loss(inp, kl_coef=0.1, clip_eps=None)
    loss.backward()
    adv = rloo_advantages(0.1)
    # kl = 0.1 -0.1 -0.1 0.1 -> shaped 0.99 0.01 0.51 1.99
    assert_close(adv, [0.98, -0.98, -1.48, 1.48])
    assert_close(loss.item(), -sum(adv[i] * LOGPI[i] for i in range(4)) / 4)
    assert_close(loss.item(), -0.1735)
    assert_close(inp.logp.grad, per_token_grad([-a / 4 for a in adv]))
    assert_close(metrics["advantage_abs_mean"], (0.98 + 1.48) / 2)
    assert "clip_fraction" not in metrics


def test_rloo_clipped_matches_hand_computation_and_gradient():
    eps = 0.2
    inp = make_inputs()
    loss, metrics = rloo_loss(inp, kl_coef=0.1, clip_eps=eps)
    loss.backward()
    adv = rloo_advantages(0.1)
    rho = [math.exp(LOGPI[i] - LOGBEH[i]) for i in range(4)]  # e^.1 e^-.4 e^.2 e^.2
    # row 0: A>0, rho in range -> unclipped; row 1: A<0, rho < 0.8 -> clipped at 0.8 binds;
    # row 2: A<0, rho > 1.2 -> unclipped (pessimistic) term; row 3: A>0, rho > 1.2 -> clip binds
    objective = [rho[0] * adv[0], 0.8 * adv[1], rho[2] * adv[2], 1.2 * adv[3]]
    assert_close(loss.item(), -sum(objective) / 4)
    expected_grad = [-rho[0] * adv[0] / 4, 0.0, -rho[2] * adv[2] / 4, 0.0]  # clipped rows: 0
    assert_close(inp.logp.grad, per_token_grad(expected_grad))
    assert metrics["clip_fraction"] == 0.5


# ---------------------------------------------------------------------------------- GRPO family


def capped_weights(cap: float) -> list[list[float]]:
    return [
        [min(math.exp(lp - b), cap) for lp, b in zip(lrow, brow)]
        for lrow, brow in zip(LOGP, BEH)
    ]


def test_grpo_matches_hand_computation_and_gradient():
    inp = make_inputs()
    loss, metrics = grpo_loss(inp, variant="grpo", clip_eps=0.2, correction=make_correction("token_tis", cap=2.0))
    loss.backward()
    # population std: group (1, 0) -> mean .5, std .5; group (0.5, 2) -> mean 1.25, std .75
    adv = [0.5 / 0.5001, -0.5 / 0.5001, -0.75 / 0.7501, 0.75 / 0.7501]
    w = capped_weights(2.0)  # all below the cap here
    per_seq = [sum(-w[i][j] * adv[i] for j in range(LENS[i])) / LENS[i] for i in range(4)]
    assert_close(loss.item(), sum(per_seq) / 4)
    grad = [[-w[i][j] * adv[i] / LENS[i] / 4 * MASK[i][j] for j in range(3)] for i in range(4)]
    assert_close(inp.logp.grad, grad)
    tokens = [w[i][j] for i in range(4) for j in range(LENS[i])]
    assert_close(metrics["is_weight_mean"], sum(tokens) / len(tokens))
    assert metrics["is_clipped_token_fraction"] == 0.0
    assert_close(metrics["advantage_abs_mean"], sum(abs(a) for a in adv) / 4)


def test_dr_grpo_with_kl_matches_hand_computation_and_gradient():
    kl_coef, max_tokens = 0.05, 4
    inp = make_inputs()
    loss, metrics = grpo_loss(
        inp, variant="dr_grpo", correction=make_correction("none"), kl_coef=kl_coef, max_tokens=max_tokens
    )
    loss.backward()
    adv = [0.5, -0.5, -0.75, 0.75]  # r - group mean, no std
    w = [[1.0] * 3 for _ in range(4)]  # correction none: no importance weighting
    per_seq, grad = [], []
    for i in range(4):
        total, g_row = 0.0, []
        for j in range(3):
            if not MASK[i][j]:
                g_row.append(0.0)
                continue
            x = REF[i][j] - LOGP[i][j]
            k3 = math.exp(x) - x - 1.0
            total += -w[i][j] * adv[i] + kl_coef * k3
            # d k3 / d logp = 1 - exp(ref - logp)
            g_row.append((-w[i][j] * adv[i] + kl_coef * (1.0 - math.exp(x))) / max_tokens / 4)
        per_seq.append(total / max_tokens)
        grad.append(g_row)
    assert_close(loss.item(), sum(per_seq) / 4)
    assert_close(inp.logp.grad, grad)
    assert metrics["is_weight_mean"] == 1.0  # none disables the correction
    assert "kl_k3_mean" in metrics


def test_grpo_truncates_importance_weights_at_cap():
    # behaviour log-probs far below the current ones: raw weights e^2, e^.3, e^1, e^.5
    logp = [[-0.1, -0.2], [-0.3, -0.4]]
    gaps = [[2.0, 0.3], [1.0, 0.5]]
    beh = [[lp - g for lp, g in zip(lr, gr)] for lr, gr in zip(logp, gaps)]

    def run(cap):
        inp = LossInputs(
            logp=t(logp).requires_grad_(True),
            mask=torch.ones(2, 2, dtype=torch.float64),
            behaviour_logp=t(beh),
            rewards=t([1.0, 0.0]),
            group_size=2,
        )
        loss, metrics = grpo_loss(inp, variant="grpo", correction=make_correction("token_tis", cap=cap))
        loss.backward()
        return loss.item(), inp.logp.grad, metrics

    loss, grad, metrics = run(2.0)
    adv = [0.5 / 0.5001, -0.5 / 0.5001]
    w = [[2.0, math.exp(0.3)], [2.0, math.exp(0.5)]]  # e^2 and e^1 exceed the cap of 2
    assert_close(loss, -(adv[0] * sum(w[0]) / 2 + adv[1] * sum(w[1]) / 2) / 2)
    assert_close(grad, [[-w[i][j] * adv[i] / 2 / 2 for j in range(2)] for i in range(2)])
    assert metrics["is_clipped_token_fraction"] == 0.5
    assert_close(metrics["is_weight_mean"], (4.0 + math.exp(0.3) + math.exp(0.5)) / 4)

    # cap=None (is_cap: null) switches the correction off entirely (w = 1), not just the truncation
    _, grad_off, metrics_off = run(None)
    assert_close(grad_off, [[-adv[i] / 2 / 2 for _ in range(2)] for i in range(2)])
    assert metrics_off["is_clipped_token_fraction"] == 0.0
    assert metrics_off["is_weight_mean"] == 1.0


# ------------------------------------------------------------------------------------------- PPO


def test_ppo_matches_hand_computation_and_gradients():
    gamma, lam, kl_coef, vf_coef = 0.9, 0.8, 0.1, 0.1
    gl = gamma * lam
    logp = [[-0.5, -1.0, -0.2], [-0.3, -0.9, PAD]]
    beh = [[-0.6, -0.9, -0.3], [-0.6, -0.6, PAD]]
    ref = [[-0.7, -1.1, -0.1], [-0.4, -0.3, PAD]]
    vals = [[0.2, 0.4, 0.6], [0.1, -0.3, 5.0]]
    inp = LossInputs(
        logp=t(logp).requires_grad_(True),
        mask=t([[1, 1, 1], [1, 1, 0]]),
        behaviour_logp=t(beh),
        rewards=t([1.0, 0.5]),
        group_size=1,
        ref_logp=t(ref),
        values=t(vals).requires_grad_(True),
    )
    loss, metrics = ppo_loss(
        inp, kl_coef=kl_coef, clip_eps=0.2, vf_coef=vf_coef, gamma=gamma, lam=lam
    )
    loss.backward()

    # token rewards: -0.1 * (beh - ref), task reward on the last completion token
    rew0 = [-0.1 * 0.1, -0.1 * 0.2, -0.1 * -0.2 + 1.0]
    rew1 = [-0.1 * -0.2, -0.1 * -0.3 + 0.5]
    # GAE, back to front; the value after the last token is 0
    a02 = rew0[2] + 0.0 - 0.6
    a01 = rew0[1] + gamma * 0.6 - 0.4 + gl * a02
    a00 = rew0[0] + gamma * 0.4 - 0.2 + gl * a01
    a11 = rew1[1] + 0.0 - (-0.3)
    a10 = rew1[0] + gamma * (-0.3) - 0.1 + gl * a11
    assert_close([a00, a01, a02, a10, a11], [0.454128, 0.4224, 0.42, 0.2476, 0.83])
    rho0 = [math.exp(0.1), math.exp(-0.1), math.exp(0.1)]  # all inside [0.8, 1.2]
    rho1 = [math.exp(0.3), math.exp(-0.3)]  # 1.35 with A>0: clip at 1.2 binds; 0.74: unclipped
    pg0 = [-rho0[0] * a00, -rho0[1] * a01, -rho0[2] * a02]
    pg1 = [-1.2 * a10, -rho1[1] * a11]
    # returns = A + V, so the value error V - R is -A
    vf0 = [0.5 * a * a for a in (a00, a01, a02)]
    vf1 = [0.5 * a * a for a in (a10, a11)]
    seq0 = sum(p + vf_coef * v for p, v in zip(pg0, vf0)) / 3
    seq1 = sum(p + vf_coef * v for p, v in zip(pg1, vf1)) / 2
    assert_close(loss.item(), (seq0 + seq1) / 2)

    grad_logp = [
        [-rho0[0] * a00 / 3 / 2, -rho0[1] * a01 / 3 / 2, -rho0[2] * a02 / 3 / 2],
        [0.0, -rho1[1] * a11 / 2 / 2, 0.0],
    ]
    assert_close(inp.logp.grad, grad_logp)
    grad_v = [
        [-vf_coef * a / 3 / 2 for a in (a00, a01, a02)],
        [-vf_coef * a10 / 2 / 2, -vf_coef * a11 / 2 / 2, 0.0],
    ]
    assert_close(inp.values.grad, grad_v)
    assert_close(metrics["clip_fraction"], 1 / 5)
    assert_close(metrics["value_loss"], (sum(vf0) / 3 + sum(vf1) / 2) / 2)
    assert_close(metrics["policy_loss"], (sum(pg0) / 3 + sum(pg1) / 2) / 2)
    assert_close(metrics["advantage_mean"], (a00 + a01 + a02 + a10 + a11) / 5)


# ------------------------------------------------------------------- micro-batch invariance


def random_batch(seed: int, groups: int = 3, k: int = 3, tokens: int = 5) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = groups * k
    lengths = torch.randint(1, tokens + 1, (n,), generator=gen)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -torch.rand(n, tokens, generator=gen, dtype=torch.float64) * 2
    rewards = torch.rand(n, generator=gen, dtype=torch.float64) * 2
    rewards[:k] = 0.5  # group 0 all tied: matters for DPO's denominator
    return dict(
        logp=logp,
        mask=mask,
        # behaviour up to 1.5 nats below logp so some GRPO IS weights exceed the cap
        behaviour_logp=logp - torch.rand(n, tokens, generator=gen, dtype=torch.float64) * 1.5 + 0.3,
        rewards=rewards,
        group_size=k,
        ref_logp=logp - torch.randn(n, tokens, generator=gen, dtype=torch.float64) * 0.3,
        values=torch.randn(n, tokens, generator=gen, dtype=torch.float64),
    )


LOSSES = {
    "tb": lambda inp: tb_loss(inp, beta=0.3),
    "dpo_sigmoid": lambda inp: online_dpo_loss(inp, beta=0.2),
    "dpo_ipo": lambda inp: online_dpo_loss(inp, beta=0.2, variant="ipo"),
    "rloo": lambda inp: rloo_loss(inp, kl_coef=0.05, clip_eps=None),
    "rloo_clip": lambda inp: rloo_loss(inp, kl_coef=0.05, clip_eps=0.2),
    "grpo": lambda inp: grpo_loss(inp, variant="grpo", correction=make_correction("token_tis", cap=1.5), kl_coef=0.04),
    "dr_grpo": lambda inp: grpo_loss(
        inp, variant="dr_grpo", correction=make_correction("token_tis", cap=1.5), kl_coef=0.04, max_tokens=5
    ),
    "ppo": lambda inp: ppo_loss(inp, kl_coef=0.05, gamma=0.9, lam=0.8),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_micro_batches_of_whole_groups_reproduce_full_batch(name):
    data = random_batch(seed=7)
    full, _, total, (logp, values), (logp_mb, values_mb) = micro_batch_run(LOSSES[name], data, groups=3)

    assert logp.grad.abs().sum() > 0  # a vacuous zero gradient would pass trivially
    assert_close(total, full.item())
    assert_close(logp_mb.grad, logp.grad)
    if name == "ppo":
        assert values.grad.abs().sum() > 0
        assert_close(values_mb.grad, values.grad)


# --------------------------------------------------------------------------------- error paths


def test_unknown_variants_raise():
    with pytest.raises(ValueError, match="variant"):
        online_dpo_loss(make_inputs(), beta=0.1, variant="hinge")
    with pytest.raises(ValueError, match="variant"):
        grpo_loss(make_inputs(), variant="ppo")


@pytest.mark.parametrize(
    "call",
    [
        lambda inp: tb_loss(inp, beta=1.0),
        lambda inp: online_dpo_loss(inp, beta=0.1),
        lambda inp: rloo_loss(inp, kl_coef=0.0, clip_eps=None),
        lambda inp: grpo_loss(inp),
        lambda inp: grpo_loss(inp, variant="dr_grpo", max_tokens=3),
    ],
)
def test_group_losses_reject_groups_of_one(call):
    with pytest.raises(ValueError, match="group_size"):
        call(make_inputs(k=1))


def test_dr_grpo_requires_max_tokens():
    with pytest.raises(ValueError, match="max_tokens"):
        grpo_loss(make_inputs(), variant="dr_grpo")


def test_ppo_requires_values_and_accepts_groups_of_one():
    with pytest.raises(ValueError, match="values"):
        ppo_loss(make_inputs(), kl_coef=0.1)
    loss, _ = ppo_loss(make_inputs(k=1, values=torch.zeros(4, 3, dtype=torch.float64)), kl_coef=0.1)
    assert torch.isfinite(loss)


def test_group_loss_registry():
    assert GROUP_LOSSES == {"tb", "online_dpo", "rloo", "grpo", "dr_grpo"}
    assert MIN_GROUP_SIZE["ppo"] == 1


def test_engine_mismatch_sums_by_hand_and_micro_batch_invariant():
    from asyncrl.losses.common import mismatch_metrics, mismatch_sums

    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])  # [N=2, T=2]
    beh = torch.tensor([[-1.5, -2.0], [-0.25, 7.0]])  # the padded position's value must not count
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    fresh = torch.tensor([True, False])
    m = mismatch_metrics(mismatch_sums(logp, beh, mask, fresh))
    # log r = 0.5, 0, -0.25; k3 = e^x - 1 - x: 0.1487212707, 0, 0.0288007831
    assert m["engine_logp_abs_diff"] == pytest.approx(0.75 / 3, abs=1e-7)
    assert m["engine_kl"] == pytest.approx((0.1487212707 + 0.0288007831) / 3, abs=1e-7)
    assert m["engine_logp_abs_diff_fresh"] == pytest.approx(0.25, abs=1e-7)
    assert m["engine_kl_fresh"] == pytest.approx(0.1487212707 / 2, abs=1e-7)
    parts = [mismatch_sums(logp[i : i + 1], beh[i : i + 1], mask[i : i + 1], fresh[i : i + 1]) for i in range(2)]
    summed = {k: parts[0][k] + parts[1][k] for k in parts[0]}
    assert mismatch_metrics(summed) == pytest.approx(m, abs=1e-7)
    assert "engine_kl_fresh" not in mismatch_metrics(mismatch_sums(logp, beh, mask, torch.tensor([False, False])))
