"""Off-policy corrections, dual-clip, decoupled PPO and the bias-corrected KL against
hand-computed numbers; micro-batch invariance; the default losses bitwise as before; config rules.

Expected values are plain Python floats and ``math``; tensors are float64 so tolerances are tight.
"""

from __future__ import annotations

import math

import pytest
import torch

from asyncrl.config import Config, GrpoLoss, leaf_values
from asyncrl.losses import LossInputs, grpo_loss, ppo_loss, rloo_loss
from asyncrl.losses.common import grouped, require_group_size, seq_mean, seq_sum
from asyncrl.losses.corrections import CORRECTIONS, make_correction
from asyncrl.losses.registry import make_loss

from conftest import micro_batch_run

REL = 1e-9
PAD = 400.0  # exp(+-800) is inf in float64: any padding leak turns a number into inf or nan

# N=3 rows, T=3; row 1 has a padded last token. log r = target - behaviour per token:
#   row 0: 0.1, 0.5, 0.0    row 1: -0.2, -0.3, (pad)    row 2: 1.0, 0.0, -0.1
TGT = [[-0.5, -1.0, -0.2], [-0.3, -0.9, PAD], [-1.2, -0.4, -0.6]]
BEH = [[-0.6, -1.5, -0.2], [-0.1, -0.6, -PAD], [-2.2, -0.4, -0.5]]
MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 1]]
LOGR = [[0.1, 0.5, 0.0], [-0.2, -0.3], [1.0, 0.0, -0.1]]
S = [0.6, -0.5, 0.9]  # sequence sums of log r
LENS = [3, 2, 3]


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def assert_close(actual, expected, rel: float = REL) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), rtol=rel, atol=1e-12)


def check_weights(weight: torch.Tensor, expected_rows) -> None:
    for i, row in enumerate(expected_rows):
        assert_close(weight[i, : LENS[i]], row)


def mean_tokens(rows) -> float:
    flat = [x for r in rows for x in r]
    return sum(flat) / len(flat)


E = math.exp
# hand weights per correction (thresholds in HAND_ARGS), real tokens only
HAND = {
    "none": [[1.0] * 3, [1.0] * 2, [1.0] * 3],
    # min(r, 1.5): e^0.5 = 1.6487 and e^1 = 2.718 are truncated
    "token_tis": [[E(0.1), 1.5, 1.0], [E(-0.2), E(-0.3)], [1.5, 1.0, E(-0.1)]],
    # r * [0.7 <= r <= 1.25]: e^0.5 and e^1 fall outside; e^-0.3 = 0.741 stays
    "token_mask": [[E(0.1), 0.0, 1.0], [E(-0.2), E(-0.3)], [0.0, 1.0, E(-0.1)]],
    # min(e^S, 2): e^0.6 = 1.822, e^-0.5 = 0.607, e^0.9 = 2.460 -> 2
    "sequence_tis": [[E(0.6)] * 3, [E(-0.5)] * 2, [2.0] * 3],
    # e^S * [e^S <= 2]
    "sequence_mask": [[E(0.6)] * 3, [E(-0.5)] * 2, [0.0] * 3],
    # [0.75 <= e^(S/|y|) <= 1.25]: e^0.2 = 1.221 kept, e^-0.25 = 0.779 kept, e^0.3 = 1.350 masked
    "geometric_mask": [[1.0] * 3, [1.0] * 2, [0.0] * 3],
}
HAND_ARGS = {"none": {}, "token_tis": {"cap": 1.5}, "token_mask": {"low": 0.7, "high": 1.25},
             "sequence_tis": {"cap": 2.0}, "sequence_mask": {"cap": 2.0}, "geometric_mask": {"delta": 0.25}}
# (clipped tokens, clipped seqs, masked tokens, masked seqs) out of 8 tokens and 3 sequences
HAND_FRACTIONS = {
    "none": (0, 0, 0, 0), "token_tis": (2, 2, 0, 0), "token_mask": (0, 0, 2, 2), "sequence_tis": (3, 1, 0, 0),
    "sequence_mask": (0, 0, 3, 1), "geometric_mask": (0, 0, 3, 1),
}


def test_table_covers_every_config_choice():
    from typing import get_args

    choices = set(get_args(GrpoLoss.model_fields["off_policy_correction"].annotation)) - {"auto"}
    assert set(CORRECTIONS) == choices == set(HAND)


@pytest.mark.parametrize("name", list(HAND))
def test_correction_weights_and_metrics_by_hand(name):
    fn = make_correction(name, **HAND_ARGS[name])
    weight, m = fn(t(TGT), t(BEH), t(MASK))
    assert torch.isfinite(weight).all()  # padding's +-400 never reaches exp
    check_weights(weight, HAND[name])
    assert_close(m["is_weight_mean"], mean_tokens(HAND[name]))
    ct, cs, mt, ms = HAND_FRACTIONS[name]
    assert_close([m["is_clipped_token_fraction"], m["is_clipped_seq_fraction"], m["is_masked_token_fraction"],
                  m["is_masked_seq_fraction"]], [ct / 8, cs / 3, mt / 8, ms / 3])


@pytest.mark.parametrize("name", ["token_mask", "sequence_mask", "geometric_mask"])
def test_masks_alone_with_weighted_false(name):
    weight, _ = make_correction(name, weighted=False, **HAND_ARGS[name])(t(TGT), t(BEH), t(MASK))
    check_weights(weight, [[1.0 if x else 0.0 for x in row] for row in HAND[name]])


def test_make_correction_refuses_unknown_names_and_reweight_only_masks():
    with pytest.raises(ValueError, match="unknown off_policy_correction"):
        make_correction("token_clip")
    for name in ("token_tis", "sequence_tis"):
        with pytest.raises(ValueError, match="only reweights"):
            make_correction(name, weighted=False, cap=2.0)


def test_token_tis_cap_none_is_off():
    weight, m = make_correction("token_tis", cap=None)(t(TGT), t(BEH), t(MASK))
    assert torch.equal(weight, torch.ones(3, 3, dtype=torch.float64)) and m["is_weight_mean"] == 1.0


# ------------------------------------------------------------------------ corrections in losses


def grpo_inputs(**overrides) -> LossInputs:
    # one group of K=3
    fields = dict(logp=t(TGT).requires_grad_(True), mask=t(MASK), behaviour_logp=t(BEH),
                  rewards=t([1.0, 0.0, 0.5]), group_size=3)
    fields.update(overrides)
    return LossInputs(**fields)


# one group (1, 0, 0.5): mean 0.5, population std sqrt(1/6)
STD = math.sqrt(((0.5) ** 2 + (0.5) ** 2 + 0.0) / 3)
ADV = [0.5 / (STD + 1e-4), -0.5 / (STD + 1e-4), 0.0]


@pytest.mark.parametrize("name", list(HAND))
def test_grpo_with_each_correction_by_hand(name):
    inp = grpo_inputs()
    loss, m = grpo_loss(inp, correction=make_correction(name, **HAND_ARGS[name]))
    loss.backward()
    w = HAND[name]
    # rho = 1 in value: l_t = -w_t A_i; loss = mean_i sum_t l_t / |y_i|; d/dlogp_t = -w_t A_i / |y_i| / N
    assert_close(loss.item(), sum(sum(-x * ADV[i] for x in w[i]) / LENS[i] for i in range(3)) / 3)
    grad = [[(-w[i][j] * ADV[i] / LENS[i] / 3 if j < LENS[i] else 0.0) for j in range(3)] for i in range(3)]
    assert_close(inp.logp.grad, grad)
    assert_close(m["is_weight_mean"], mean_tokens(w))


def test_rloo_with_token_tis_by_hand():
    inp = grpo_inputs()
    loss, _ = rloo_loss(inp, kl_coef=0.0, clip_eps=None, correction=make_correction("token_tis", cap=1.5))
    loss.backward()
    # leave-one-out: A_i = r_i - mean of the other two: 1 - 0.25, 0 - 0.75, 0.5 - 0.5
    adv = [0.75, -0.75, 0.0]
    w = HAND["token_tis"]
    assert_close(loss.item(), sum(-adv[i] * sum(w[i][j] * TGT[i][j] for j in range(LENS[i])) for i in range(3)) / 3)
    assert_close(inp.logp.grad, [[(-adv[i] * w[i][j] / 3 if j < LENS[i] else 0.0) for j in range(3)]
                                 for i in range(3)])


def test_rloo_clip_with_sequence_mask_drops_the_masked_sequence():
    # sequence log-ratios vs BEH: 0.6, 0.1, 0.0 -> with cap 1.5 row 0 (e^0.6 = 1.82) is masked
    logp = [[-0.5, -1.0, -0.2], [-0.05, -0.55, PAD], [-2.2, -0.4, -0.5]]
    inp = grpo_inputs(logp=t(logp).requires_grad_(True))
    loss, m = rloo_loss(inp, kl_coef=0.0, clip_eps=0.2,
                        correction=make_correction("sequence_mask", weighted=False, cap=1.5))
    loss.backward()
    adv = [0.75, -0.75, 0.0]
    rho1 = E(0.1)  # inside [0.8, 1.2]: the unclipped branch, gradient -A rho per token
    assert_close(loss.item(), (0.0 - rho1 * adv[1] + 0.0) / 3)
    grad = [[0.0] * 3, [-adv[1] * rho1 / 3] * 2 + [0.0], [0.0] * 3]
    assert_close(inp.logp.grad, grad)
    assert_close(m["is_masked_seq_fraction"], 1 / 3)
    # without the mask row 0 (A > 0, rho 1.82 clipped at 1.2) adds -1.2 * 0.75 to the sum
    loss_off, _ = rloo_loss(grpo_inputs(logp=t(logp)), kl_coef=0.0, clip_eps=0.2)
    assert_close(loss_off.item(), (-1.2 * adv[0] - rho1 * adv[1]) / 3)


# --------------------------------------------------------------------------- decoupled / dual-clip


# proximal log-probs: rho = exp(logp - prox) = e^-0.3, e^0.1, (pad) | e^0.5, e^-0.1, e^0.0 | e^1.5, e^0.2, e^-0.05
LOGP_D = [[-0.5, -1.0, -0.2], [-0.3, -0.9, PAD], [-1.2, -0.4, -0.6]]
PROX_D = [[-0.2, -1.1, -0.2], [-0.8, -0.8, -PAD], [-2.7, -0.6, -0.55]]
RHO_D = [[-0.3, 0.1, 0.0], [0.5, -0.1], [1.5, 0.2, -0.05]]


def test_decoupled_grpo_with_dual_clip_by_hand():
    # behaviour = prox - 0.2 everywhere: behaviour weight e^0.2 = 1.2214 < cap 2 on every token
    beh = [[p - 0.2 for p in row] for row in PROX_D]
    inp = grpo_inputs(logp=t(LOGP_D).requires_grad_(True), behaviour_logp=t(beh), prox_logp=t(PROX_D),
                      rewards=t([1.0, 0.0, 0.0]))
    loss, m = grpo_loss(inp, clip_eps=0.2, decoupled=True, clip_ratio_c=3.0,
                        correction=make_correction("token_tis", cap=2.0))
    loss.backward()
    # group (1, 0, 0): mean 1/3, population std sqrt(2)/3
    std = math.sqrt(2) / 3
    adv = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4)]
    w = E(0.2)
    total, grad = 0.0, []
    for i in range(3):
        row_total, g_row = 0.0, []
        for j in range(3):
            if j >= LENS[i]:
                g_row.append(0.0)
                continue
            rho = E(RHO_D[i][j])
            a = adv[i]
            pg = -min(rho * a, min(max(rho, 0.8), 1.2) * a)
            unclipped = pg == -rho * a
            if a < 0 and pg > -3.0 * a:  # dual-clip: rho e^1.5 = 4.48 > 3 on a negative advantage
                pg, unclipped = -3.0 * a, False
            row_total += w * pg
            g_row.append(-w * rho * a / LENS[i] / 3 if unclipped else 0.0)
        total += row_total / LENS[i]
        grad.append(g_row)
    assert_close(loss.item(), total / 3)
    assert_close(inp.logp.grad, grad)
    assert_close(m["dual_clip_fraction"], 1 / 8)  # row 2, token 0
    assert_close(m["is_weight_mean"], w)


def test_decoupled_with_current_weights_as_prox_is_the_default_loss_bitwise():
    """sync_every 1: the learner passes prox = stopgrad(logp): grpo is then exactly the default."""
    data = random_batch(3)
    a = LossInputs(**{**data, "logp": data["logp"].clone().requires_grad_(True)})
    b = LossInputs(**{**data, "logp": data["logp"].clone().requires_grad_(True), "prox_logp": data["logp"]})
    la, _ = grpo_loss(a, kl_coef=0.05)
    lb, _ = grpo_loss(b, kl_coef=0.05, decoupled=True)
    la.backward(), lb.backward()
    assert torch.equal(la, lb) and torch.equal(a.logp.grad, b.logp.grad)


def test_decoupled_ppo_by_hand():
    """gamma = lam = 1, V = 0, kl_coef 0: every token's advantage is the sequence reward."""
    beh = [[p - 0.2 for p in row] for row in PROX_D]
    beh[2][0] = PROX_D[2][0] - 1.0  # behaviour weight e^1 = 2.718 -> truncated at 2
    inp = LossInputs(logp=t(LOGP_D).requires_grad_(True), mask=t(MASK), behaviour_logp=t(beh),
                     rewards=t([1.0, -0.5, 2.0]), group_size=1, prox_logp=t(PROX_D),
                     values=torch.zeros(3, 3, dtype=torch.float64, requires_grad=True))
    loss, m = ppo_loss(inp, kl_coef=0.0, clip_eps=0.2, vf_coef=0.1, gamma=1.0, lam=1.0, decoupled=True,
                       correction=make_correction("token_tis", cap=2.0))
    loss.backward()
    rewards = [1.0, -0.5, 2.0]
    total, grad = 0.0, []
    for i in range(3):
        a, row_total, g_row = rewards[i], 0.0, []
        for j in range(3):
            if j >= LENS[i]:
                g_row.append(0.0)
                continue
            rho, w = E(RHO_D[i][j]), (2.0 if (i, j) == (2, 0) else E(0.2))
            clipped = min(max(rho, 0.8), 1.2)
            pg = -min(rho * a, clipped * a)
            row_total += w * pg + 0.1 * 0.5 * a * a  # value error V - R = -A
            g_row.append(-w * rho * a / LENS[i] / 3 if rho * a <= clipped * a else 0.0)
        total += row_total / LENS[i]
        grad.append(g_row)
    assert_close(loss.item(), total / 3)
    assert_close(inp.logp.grad, grad)
    assert_close(m["is_clipped_token_fraction"], 1 / 8)


def test_plain_ppo_with_a_mask_keeps_its_behaviour_ratio():
    """ppo without decoupled: rho = pi / behaviour as before; geometric_mask zeroes row 2."""
    inp = LossInputs(logp=t(TGT).requires_grad_(True), mask=t(MASK), behaviour_logp=t(BEH),
                     rewards=t([1.0, -0.5, 2.0]), group_size=1,
                     values=torch.zeros(3, 3, dtype=torch.float64, requires_grad=True))
    loss, _ = ppo_loss(inp, kl_coef=0.0, clip_eps=0.2, gamma=1.0, lam=1.0,
                       correction=make_correction("geometric_mask", weighted=False, delta=0.25))
    loss.backward()
    rewards = [1.0, -0.5, 2.0]
    keep = [1.0, 1.0, 0.0]
    grad = []
    for i in range(3):
        g_row = []
        for j in range(3):
            if j >= LENS[i]:
                g_row.append(0.0)
                continue
            rho, a = E(LOGR[i][j]), rewards[i]
            inside = rho * a <= min(max(rho, 0.8), 1.2) * a
            g_row.append(-keep[i] * rho * a / LENS[i] / 3 if inside else 0.0)
        grad.append(g_row)
    assert_close(inp.logp.grad, grad)


def test_bias_corrected_kl_gradient_by_hand():
    ref = [[-0.7, -1.1, -0.1], [-0.4, -0.3, -PAD], [-1.1, -0.3, -0.9]]
    kl_coef = 0.1
    grads = {}
    for flag in (False, True):
        inp = grpo_inputs(ref_logp=t(ref))
        loss, _ = grpo_loss(inp, kl_coef=kl_coef, correction=make_correction("none"), kl_bias_correction=flag)
        loss.backward()
        grads[flag] = (loss.item(), inp.logp.grad)
    # the loss value is the same (rho = 1); the gradient gains kl_coef * k3_t / |y_i| / N per token
    assert_close(grads[True][0], grads[False][0])
    extra = [[0.0] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(LENS[i]):
            x = ref[i][j] - TGT[i][j]
            extra[i][j] = kl_coef * (E(x) - x - 1.0) / LENS[i] / 3
    assert_close(grads[True][1] - grads[False][1], extra)
    assert (grads[True][1] - grads[False][1]).abs().sum() > 0


def test_dual_clip_in_plain_ppo_bounds_negative_advantages():
    # one token: behaviour far below logp -> rho = e^2 = 7.39; A = -1 (reward -1 at the last token)
    inp = LossInputs(logp=t([[-0.1]]).requires_grad_(True), mask=t([[1.0]]), behaviour_logp=t([[-2.1]]),
                     rewards=t([-1.0]), group_size=1, values=torch.zeros(1, 1, dtype=torch.float64))
    loss, m = ppo_loss(inp, kl_coef=0.0, vf_coef=0.0, clip_ratio_c=3.0)
    loss.backward()
    assert_close(loss.item(), 3.0)  # -min(-7.39, -1.2) = 7.39, bounded by -c A = 3
    assert inp.logp.grad.abs().sum() == 0 and m["dual_clip_fraction"] == 1.0
    loss_off, _ = ppo_loss(inp, kl_coef=0.0, vf_coef=0.0)
    assert_close(loss_off.item(), E(2.0))


# ------------------------------------------------------------------------- micro-batch invariance


def random_batch(seed: int, groups: int = 3, k: int = 3, tokens: int = 5) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = groups * k
    lengths = torch.randint(1, tokens + 1, (n,), generator=gen)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).to(torch.float64)
    logp = -torch.rand(n, tokens, generator=gen, dtype=torch.float64) * 2
    noise = lambda scale: torch.randn(n, tokens, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    return dict(logp=logp, mask=mask, behaviour_logp=logp + noise(0.5),
                rewards=torch.rand(n, generator=gen, dtype=torch.float64) * 2, group_size=k,
                ref_logp=logp + noise(0.3), values=noise(1.0), prox_logp=logp + noise(0.3))


def _c(name, weighted=True):
    return make_correction(name, weighted=weighted, cap=1.5, low=0.6, high=1.6, delta=0.2)


VARIANTS = {
    **{f"grpo_{n}": (lambda inp, n=n: grpo_loss(inp, correction=_c(n), kl_coef=0.05)) for n in CORRECTIONS},
    "grpo_decoupled_dual_klbias": lambda inp: grpo_loss(inp, correction=_c("sequence_tis"), decoupled=True,
                                                        clip_ratio_c=2.0, kl_coef=0.05, kl_bias_correction=True),
    **{f"rloo_{n}": (lambda inp, n=n: rloo_loss(inp, kl_coef=0.05, clip_eps=None, correction=_c(n)))
       for n in CORRECTIONS},
    "rloo_clip_geometric": lambda inp: rloo_loss(inp, kl_coef=0.05, clip_eps=0.2,
                                                 correction=_c("geometric_mask", weighted=False)),
    "ppo_token_mask_dual": lambda inp: ppo_loss(inp, kl_coef=0.05, correction=_c("token_mask", weighted=False),
                                                clip_ratio_c=2.0),
    "ppo_decoupled_seq_mask": lambda inp: ppo_loss(inp, kl_coef=0.05, correction=_c("sequence_mask"),
                                                   decoupled=True, clip_ratio_c=2.0),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_micro_batches_reproduce_full_batch(name):
    data = random_batch(seed=11)
    full, _, total, (logp, _), (logp_mb, _) = micro_batch_run(VARIANTS[name], data, groups=3)
    assert logp.grad.abs().sum() > 0
    assert_close(total, full.item(), rel=1e-12)
    assert_close(logp_mb.grad, logp.grad, rel=1e-12)


# --------------------------------------------------------------- the defaults, bitwise as before


def _grpo_before(inp, *, variant="grpo", clip_eps=0.2, is_cap=2.0, kl_coef=0.0, max_tokens=None):
    """grpo_loss as it was before off_policy_correction (commit d704faa), for the bitwise check."""
    k = require_group_size(inp, 2, variant)
    mask = inp.mask
    rewards = grouped(inp.rewards, k).detach()
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if variant == "grpo":
        centered = centered / (rewards.std(dim=1, unbiased=False, keepdim=True) + 1e-4)
    adv = centered.reshape(-1, 1)
    old = inp.logp.detach()
    rho = torch.exp(inp.logp - old)
    pg = -torch.minimum(rho * adv, rho.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    if is_cap is None:
        weight = torch.ones_like(old)
    else:
        weight = torch.exp((old - inp.behaviour_logp.detach()) * mask).clamp(max=is_cap)
    per_token = weight * pg
    if kl_coef > 0:
        log_ratio = (inp.ref_or_zeros() - inp.logp) * mask
        per_token = per_token + kl_coef * (torch.exp(log_ratio) - log_ratio - 1.0)
    per_seq = seq_mean(per_token, mask) if variant == "grpo" else seq_sum(per_token, mask) / max_tokens
    return per_seq.mean()


def _rloo_before(inp, *, kl_coef, clip_eps):
    k = inp.group_size
    kl = seq_sum(inp.behaviour_logp - inp.ref_or_zeros(), inp.mask)
    shaped = grouped((inp.rewards - kl_coef * kl).detach(), k)
    adv = (shaped - (shaped.sum(dim=1, keepdim=True) - shaped) / (k - 1)).reshape(-1)
    logpi = seq_sum(inp.logp, inp.mask)
    if clip_eps is None:
        return (-adv * logpi).mean()
    rho = torch.exp(logpi - seq_sum(inp.behaviour_logp, inp.mask))
    return (-torch.minimum(rho * adv, rho.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)).mean()


def _ppo_before(inp, *, kl_coef, clip_eps, vf_coef, gamma, lam):
    from asyncrl.losses.ppo import _gae, _last_token_onehot

    mask, values = inp.mask, inp.values
    v_old, beh = values.detach(), inp.behaviour_logp.detach()
    token_rewards = -kl_coef * ((beh - inp.ref_or_zeros()) * mask) + _last_token_onehot(mask) * inp.rewards[:, None]
    adv = _gae(token_rewards, v_old, mask, gamma, lam)
    rho = torch.exp((inp.logp - beh) * mask)
    pg = -torch.minimum(rho * adv, rho.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    return seq_mean(pg + vf_coef * 0.5 * (values - (adv + v_old)).pow(2), mask).mean()


BEFORE = {
    "grpo": ({}, lambda cfg, inp: _grpo_before(inp, kl_coef=cfg.loss.kl_coef, max_tokens=cfg.sampling.max_new_tokens)),
    "grpo_cap_none": ({"is_cap": None}, lambda cfg, inp: _grpo_before(inp, is_cap=None, kl_coef=cfg.loss.kl_coef)),
    "dr_grpo": ({"variant": "dr_grpo", "is_cap": 1.5},
                lambda cfg, inp: _grpo_before(inp, variant="dr_grpo", is_cap=1.5, kl_coef=cfg.loss.kl_coef,
                                              max_tokens=cfg.sampling.max_new_tokens)),
    "rloo": ({}, lambda cfg, inp: _rloo_before(inp, kl_coef=cfg.loss.kl_coef, clip_eps=None)),
    "rloo_clip": ({"rloo_clip": True}, lambda cfg, inp: _rloo_before(inp, kl_coef=cfg.loss.kl_coef, clip_eps=cfg.loss.clip_eps)),
    "ppo": ({}, lambda cfg, inp: _ppo_before(inp, kl_coef=cfg.loss.kl_coef, clip_eps=cfg.loss.clip_eps, vf_coef=cfg.loss.vf_coef,
                                             gamma=cfg.loss.gamma, lam=cfg.loss.gae_lambda)),
}


@pytest.mark.parametrize("name", list(BEFORE))
def test_default_losses_are_bitwise_what_they_were(name):
    """The registry's default grpo (auto = token_tis with is_cap), rloo and ppo (auto = none) give
    exactly the loss and gradient of the formulas before off_policy_correction existed."""
    overrides, before = BEFORE[name]
    loss_name = name.split("_")[0] if not name.startswith("dr_") else "grpo"
    cfg = Config(loss=loss_name, **overrides)
    data = random_batch(5)
    a_leaf, b_leaf = data["logp"].clone().requires_grad_(True), data["logp"].clone().requires_grad_(True)
    va, vb = data["values"].clone().requires_grad_(True), data["values"].clone().requires_grad_(True)
    a = LossInputs(**{**data, "logp": a_leaf, "values": va, "prox_logp": None})
    b = LossInputs(**{**data, "logp": b_leaf, "values": vb, "prox_logp": None})
    new, _ = make_loss(cfg)(a, 0)
    old = before(cfg, b)
    new.backward(), old.backward()
    assert torch.equal(new.detach(), old.detach()), (new.item(), old.item())
    assert torch.equal(a_leaf.grad, b_leaf.grad)
    assert a_leaf.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- config


def test_auto_resolves_per_loss():
    assert Config(loss="grpo").loss.correction == "token_tis"
    assert Config(loss="rloo").loss.correction == "none"
    assert Config(loss="ppo").loss.correction == "none"
    assert Config(loss="ppo", decoupled=True).loss.correction == "token_tis"
    assert Config(loss="ppo", off_policy_correction="geometric_mask").loss.correction == "geometric_mask"


@pytest.mark.parametrize("fields, match", [
    ({"loss": "ppo", "off_policy_correction": "token_tis"}, "only a mask applies"),
    ({"loss": "ppo", "off_policy_correction": "sequence_tis"}, "only a mask applies"),
    ({"loss": "rloo", "rloo_clip": True, "off_policy_correction": "token_mask"}, "only a mask applies"),
    ({"loss": "grpo", "decoupled": True}, "sync_every"),
    ({"loss": "grpo", "clip_ratio_c": 3.0}, "no clip binds"),
    ({"loss": "ppo", "decoupled": True, "clip_ratio_c": 3.0}, "no clip binds"),
    ({"loss": "grpo", "kl_bias_correction": True, "kl_coef": 0.0}, "kl_coef"),
    ({"loss": "grpo", "off_policy_correction": "sequence_mask", "is_cap": None}, "needs is_cap"),
])
def test_meaningless_combinations_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        Config(**fields)


@pytest.mark.parametrize("fields", [
    dict(loss="ppo", off_policy_correction="token_mask", clip_ratio_c=3.0),
    dict(loss="ppo", decoupled=True, sync_every=2, max_lag=1, clip_ratio_c=3.0),
    dict(loss="grpo", decoupled=True, sync_every=2, max_lag=1, clip_ratio_c=3.0, kl_bias_correction=True),
    dict(loss="rloo", rloo_clip=True, off_policy_correction="sequence_mask"),
])
def test_accepted_combinations(fields):
    """Accepted as given: every field lands in the run's config (none refused as unused by the
    chosen kinds) with its value unchanged."""
    values = leaf_values(Config(**fields))
    assert {k: values[k] for k in fields} == fields


def test_thresholds_the_chosen_correction_does_not_read_are_refused():
    with pytest.raises(ValueError, match="is_low is not used by off_policy_correction 'token_tis'"):
        Config(loss="grpo", is_low=0.3)  # auto = token_tis reads is_cap only
    Config(loss="grpo", off_policy_correction="token_mask", is_low=0.3)
    with pytest.raises(ValueError, match="is_cap is not used by off_policy_correction 'none'"):
        Config(loss="rloo", is_cap=3.0)  # rloo auto = none
    Config(loss="grpo", is_cap=None)  # is_cap: null switches tis off
    with pytest.raises(ValueError, match="is_geo_delta is not used"):
        Config(loss="ppo", is_geo_delta=0.2)
