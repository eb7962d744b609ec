"""Pure loss functions: ``(LossInputs, **hyperparameters) -> (scalar loss, float metrics)``.

Every loss is a mean over sequences (equivalently over groups), so micro-batches of whole groups
weighted by their share of groups accumulate exactly the full-batch gradient.
"""

from asyncrl.losses.common import LossInputs, grouped, seq_mean, seq_sum
from asyncrl.losses.dpo import DPO_VARIANTS, online_dpo_loss
from asyncrl.losses.grpo import GRPO_VARIANTS, grpo_loss
from asyncrl.losses.ppo import ppo_loss
from asyncrl.losses.rloo import rloo_loss
from asyncrl.losses.tb import linear_schedule, tb_loss

# Smallest group size K each loss accepts. The group-relative losses compare a sample with the
# other samples of its prompt (VarGrad logZ, chosen/rejected pair, leave-one-out baseline, group
# mean/std) and raise ValueError for K < 2; ppo uses a value head and works with K = 1.
MIN_GROUP_SIZE: dict[str, int] = {
    "tb": 2,
    "online_dpo": 2,
    "rloo": 2,
    "grpo": 2,
    "dr_grpo": 2,
    "ppo": 1,
}
GROUP_LOSSES = frozenset(name for name, k in MIN_GROUP_SIZE.items() if k >= 2)

__all__ = [
    "DPO_VARIANTS",
    "GROUP_LOSSES",
    "GRPO_VARIANTS",
    "LossInputs",
    "MIN_GROUP_SIZE",
    "grouped",
    "grpo_loss",
    "linear_schedule",
    "online_dpo_loss",
    "ppo_loss",
    "rloo_loss",
    "seq_mean",
    "seq_sum",
    "tb_loss",
]
