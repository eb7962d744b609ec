import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asyncrl.cli import build_parser, main, resolve
from asyncrl.config import COMMANDS, Config, ConfigError, field_docs, flat_fields, load_config


def test_defaults_are_the_async_tb_arithmetic_job():
    cfg = Config()
    assert (cfg.task.name, cfg.loss.name, cfg.model, cfg.device) == ("arithmetic", "tb", None, "auto")
    assert cfg.asynchrony.max_lag > 0 and not cfg.synchronous
    assert Config(max_lag=0).synchronous


def _help(command: str) -> str:
    return build_parser()._subparsers._group_actions[0].choices[command].format_help()


@pytest.mark.parametrize("command", ["train", "config", "eval", "sft", "rm"])
def test_every_field_has_a_docstring_and_a_flag(command):
    cls = COMMANDS[command]
    docs = field_docs(cls)
    assert set(docs) == set(flat_fields(cls)) and all(docs.values()), [k for k, v in docs.items() if not v]
    help_text = _help(command)
    for name in flat_fields(cls):
        assert "--" + name.replace("_", "-") + " " in help_text


def test_each_command_lists_only_its_own_flags_grouped_by_section():
    ev = _help("eval")
    for flag in ("--loss", "--clip-eps", "--lora-rank", "--max-lag", "--epochs", "--recency-prob", "--ray-address"):
        assert flag + " " not in ev, flag
    assert "--task" in ev and "--limit" in ev and "--vllm-dtype" in ev
    train = _help("train")
    assert "--epochs " not in train and "--completion-field" not in train
    assert "loss (tb | online_dpo | rloo | grpo | ppo):" in train and "asynchrony:" in train
    assert train.index("\n  --max-lag") > train.index("asynchrony:") > train.index("\n  --clip-eps")
    sft, rm = _help("sft"), _help("rm")
    assert "--completion-field" in sft and "--chosen-field" not in sft and "--loss " not in sft
    assert "--chosen-field" in rm and "--completion-field" not in rm


def test_flat_table_is_derived_from_the_types():
    table = flat_fields(Config)
    assert table["max_lag"].path == ("asynchrony", "max_lag")
    assert table["lora_rank"].path == ("lora", "rank") and table["vllm_dtype"].path == ("engine", "vllm", "dtype")
    assert table["task"].path == ("task", "name") and table["gsm8k_data"].kinds == ("gsm8k",)
    assert set(table["clip_eps"].kinds) == {"rloo", "grpo", "ppo"}
    assert flat_fields(COMMANDS["sft"])["data"].path == ("data", "path")
    assert table["model"].is_path and table["prompts"].is_path and not table["run_name"].is_path


def test_nested_yaml_keys_and_flat_keys_mix(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss:\n  name: grpo\n  clip_eps: 0.3\nasynchrony: {max_lag: 5}\nlr: 0.001\n")
    cfg = load_config(p, {"kl_coef": 0.1})
    assert (cfg.loss.name, cfg.loss.clip_eps, cfg.loss.kl_coef) == ("grpo", 0.3, 0.1)
    assert cfg.asynchrony.max_lag == 5 and cfg.optimizer.lr == 0.001
    assert Config(**cfg.model_dump()) == cfg  # a nested dump round-trips (workers rebuild Config(**d))
    assert Config(**yaml.safe_load(yaml.safe_dump(cfg.model_dump()))) == cfg


@pytest.mark.parametrize("given, fragment", [
    ({"gsm8k_data": "x"}, "gsm8k_data is not used by task 'arithmetic' (gsm8k_data: gsm8k); pass --task gsm8k"),
    ({"recency_prob": 0.3}, "recency_prob is not used by buffer 'fifo' (recency_prob: tba); pass --buffer tba"),
    ({"loss": "grpo", "beta": 0.2}, "beta is not used by loss 'grpo' (beta: tb, online_dpo)"),
    ({"vllm_dtype": "float16"}, "vllm_dtype is not used by engine 'hf'; pass --engine vllm"),
    ({"ray_address": "auto"}, "ray_address is not used by runtime 'local' (ray_address: ray); pass --runtime ray"),
    ({"epochs": 2}, "epochs is not used by asyncrl train (epochs: asyncrl sft, asyncrl rm)"),
    ({"lora_alpha": 8}, "lora_alpha is not used by a run without lora_rank"),
    ({"loss": "grpo", "is_low": 0.3}, "is_low is not used by off_policy_correction 'token_tis'; pass "
                                      "--off-policy-correction token_mask"),
    ({"runtime": "ray", "learner_num_gpus": 1}, "learner_num_gpus is not used by ray_learner 'driver'"),
    ({"task": {"name": "arithmetic", "gsm8k_data": "x"}}, "gsm8k_data is not used by task 'arithmetic'"),
])
def test_fields_a_run_would_ignore_are_refused_by_type(given, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=given)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_defaults_of_other_kinds_are_dropped_not_refused():
    # what an old flat config.yaml holds for fields of kinds the run did not choose
    cfg = load_config(overrides={"gsm8k_data": "../shared/data/gsm8k", "recency_prob": 0.5, "epochs": None,
                                 "vllm_dtype": "auto", "ray_address": None, "lora_rank": None, "lora_alpha": 32.0})
    assert cfg == Config()


def test_a_files_vllm_settings_are_dropped_when_the_flags_pick_no_vllm_engine(tmp_path):
    # `asyncrl eval CKPT --eval-engine hf` of a vLLM run, a resume with --engine hf: the file's vLLM
    # settings are left over, as another kind's are; given as flags, or with vLLM still read, they count.
    p = tmp_path / "c.yaml"
    p.write_text("engine: {name: vllm, vllm: {kv_cache_gb: 0.0625}}\n")
    assert load_config(p, {"engine": "hf"}).engine == Config().engine
    assert load_config(p, {"eval_engine": "hf"}, command="eval").engine.vllm.kv_cache_gb == 0.0625  # engine vllm
    assert load_config(p, {"engine": "hf", "eval_engine": "hf"}, command="eval").engine.vllm == Config().engine.vllm
    assert load_config(p, {"eval_engine": "vllm", "engine": "hf"}).engine.vllm.kv_cache_gb == 0.0625
    with pytest.raises(ConfigError, match="vllm_kv_cache_gb is not used by engine 'hf'"):
        load_config(p, {"engine": "hf", "vllm_kv_cache_gb": 1.0})
    p.write_text("engine: {name: hf, vllm: {kv_cache_gb: 0.0625}}\n")  # the file contradicts itself
    with pytest.raises(ConfigError, match="vllm_kv_cache_gb is not used"):
        load_config(p, {"engine": "hf"})


def test_python_api_takes_flat_keyword_arguments():
    cfg = Config(model="m", loss="grpo", steps=200, lora_rank=8, max_lag=0)
    assert (cfg.model, cfg.loss.name, cfg.steps, cfg.lora.rank, cfg.asynchrony.workers) == ("m", "grpo", 200, 8,
                                                                                           "inline")
    assert cfg.model_copy(update={"loss": "ppo", "vf_coef": 0.5}).loss.vf_coef == 0.5


def test_yaml_then_flags_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss: grpo\nmax_lag: 3\nlr: 1.0e-3\n")
    args = build_parser().parse_args(["train", str(p), "--max-lag", "4", "--variant", "dr_grpo",
                                      "--is-cap", "none", "--output-dir", "runs/x", "--reference", "false"])
    cfg = resolve(args)
    assert (cfg.loss.name, cfg.asynchrony.max_lag, cfg.loss.variant, cfg.loss.is_cap, cfg.optimizer.lr) == ("grpo", 4, "dr_grpo", None, 1e-3)
    assert cfg.output_dir == "runs/x" and cfg.loss.reference is False


def test_variant_default_follows_loss():
    assert load_config(overrides={"loss": "online_dpo"}).loss.variant == "sigmoid"
    assert load_config(overrides={"loss": "grpo"}).loss.variant == "grpo"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"max_lag": -1}, "max_lag: Input should be greater than or equal to 0"),
        ({"loss": "sarsa"}, "loss: unknown value 'sarsa' (choose one of tb, online_dpo, rloo, grpo, ppo)"),
        ({"loss": "grpo", "variant": "ipo"}, "variant 'ipo' is not valid for loss 'grpo'"),
        ({"samples_per_prompt": 1}, "samples_per_prompt must be >= 2"),
        ({"sync_every": 4, "max_lag": 1}, "max_lag=1 < sync_every-1=3"),
        ({"temperature": 0}, "temperature: Input should be greater than 0"),
        ({"learning_rate": 1.0}, "learning_rate: unknown field"),
        ({"micro_batch_prompts": 32, "prompts_per_step": 16}, "micro_batch_prompts cannot exceed"),
    ],
)
def test_bad_values_get_one_line_errors(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg and msg.startswith("invalid config: ")


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_cli_bad_flag_exits_nonzero_with_one_line(capsys):
    assert main(["train", "--max-lag", "-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asyncrl: error: invalid config: max_lag") and "\n" not in err


def test_cli_missing_model_path(capsys, tmp_path):
    assert main(["train", "--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "r")]) == 2
    assert "model path does not exist" in capsys.readouterr().err


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "--loss", "ppo", "--output-dir", "x"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["loss"]["name"] == "ppo" and data["loss"]["variant"] == "ppo" and data["output_dir"] == "x"


def test_console_script_installed():
    """The ``asyncrl`` command that ``pip install`` wrote beside this Python (not ``python -m``)."""
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name="asyncrl")
    assert ep.value == "asyncrl.cli:main"
    script = Path(sys.executable).parent / "asyncrl"
    assert script.is_file(), f"no {script}: install the package (pip install -e .) into this Python's environment"
    out = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--samples-per-prompt" in out.stdout, out.stderr


def test_config_reference_doc_is_current():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "gen_config_docs.py"
    assert subprocess.run([sys.executable, str(script), "--check"]).returncode == 0, (
        "docs/config.md is stale: run python scripts/gen_config_docs.py"
    )


def test_flag_values_that_look_like_yaml_collections_stay_text():
    args = build_parser().parse_args(["train", "--task", "gsm8k", "--prompt-template", "{question}"])
    assert resolve(args).task.prompt_template == "{question}"


def test_a_choice_named_none_is_that_choice_not_null():
    # `none` is YAML's null, but for a field whose choices include "none" it is that choice
    args = build_parser().parse_args(["config", "--loss", "grpo", "--off-policy-correction", "none",
                                      "--report-to", "none", "--max-grad-norm", "none"])
    cfg = resolve(args)
    assert cfg.loss.off_policy_correction == "none" and cfg.logging.report_to == ["none"] and cfg.optimizer.max_grad_norm is None


def test_resumable_fields_are_marked_on_the_types():
    from asyncrl.checkpoint import resume_may_change

    # the hand-kept list of 1948c35 (checkpoint.RESUME_MAY_CHANGE), now metadata on the fields
    old = {
        "steps", "output_dir", "resume", "resume_force", "overwrite", "debug",
        "eval_every", "eval_limit", "eval_log_generations", "eval_prompts", "eval_engine", "reference_model",
        "gold_reward_model", "reference_field", "embedding_model",
        "save_every", "save_every_minutes", "keep_checkpoints", "max_generator_restarts", "max_skipped_updates",
        "device", "learner_threads", "generator_threads", "num_generators", "workers", "weight_transport",
        "runtime", "ray_address", "generator_num_cpus", "generator_num_gpus", "generator_resources",
        "placement_strategy", "ray_learner", "learner_num_cpus", "learner_num_gpus", "reward_actor", "reward_num_gpus",
        "reward_device", "reward_batch_size", "engine", "vllm_dtype", "vllm_gpu_memory_utilization",
        "vllm_kv_cache_gb", "vllm_max_model_len", "vllm_enforce_eager",
    }
    # added since: how the learner computes (memory only, same values)
    # and when a generator takes new weights (engine section; the losses and the lag bound are unchanged)
    assert resume_may_change() == old | {"logprob_chunk_tokens", "gradient_checkpointing", "learner_ranks",
                                         "learner_timeout_s", "learner_num_nodes", "learner_cpu_offload", "padding_free",
                                         "inflight_updates"}


def test_path_fields_are_made_absolute_in_one_place(tmp_path, monkeypatch):
    from asyncrl.config import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rm").mkdir()
    (tmp_path / "p.jsonl").write_text("{}\n")
    d = absolute_paths(Config(task="custom", prompts="p.jsonl", reward_funcs="m:f,rm", model="rm"))
    assert d["model"] == str(tmp_path / "rm") and d["task"]["prompts"] == str(tmp_path / "p.jsonl")
    assert d["task"]["reward_funcs"] == ["m:f", str(tmp_path / "rm")]  # a folder among the reward functions
    assert d["output_dir"] is None
