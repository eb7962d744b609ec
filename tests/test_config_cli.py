import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asyncrl.cli import build_parser, main, resolve
from asyncrl.config import Config, ConfigError, field_docs, load_config


def test_defaults_are_the_async_tb_arithmetic_job():
    cfg = Config()
    assert (cfg.task, cfg.loss, cfg.model, cfg.device) == ("arithmetic", "tb", None, "auto")
    assert cfg.max_lag > 0 and not cfg.synchronous
    assert Config(max_lag=0).synchronous


def test_every_field_has_a_docstring_and_a_flag():
    docs = field_docs()
    assert set(docs) == set(Config.model_fields)
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for name in Config.model_fields:
        assert "--" + name.replace("_", "-") in help_text


def test_yaml_then_flags_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss: grpo\nmax_lag: 3\nlr: 1.0e-3\n")
    args = build_parser().parse_args(["train", str(p), "--max-lag", "4", "--variant", "dr_grpo",
                                      "--is-cap", "none", "--output-dir", "runs/x", "--reference", "false"])
    cfg = resolve(args)
    assert (cfg.loss, cfg.max_lag, cfg.variant, cfg.is_cap, cfg.lr) == ("grpo", 4, "dr_grpo", None, 1e-3)
    assert cfg.output_dir == "runs/x" and cfg.reference is False


def test_variant_default_follows_loss():
    assert load_config(overrides={"loss": "online_dpo"}).variant == "sigmoid"
    assert load_config(overrides={"loss": "grpo"}).variant == "grpo"


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
    assert data["loss"] == "ppo" and data["variant"] == "ppo" and data["output_dir"] == "x"


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
    assert resolve(args).prompt_template == "{question}"


def test_a_choice_named_none_is_that_choice_not_null():
    # `none` is YAML's null, but for a field whose choices include "none" it is that choice
    args = build_parser().parse_args(["config", "--loss", "grpo", "--off-policy-correction", "none",
                                      "--report-to", "none", "--max-grad-norm", "none"])
    cfg = resolve(args)
    assert cfg.off_policy_correction == "none" and cfg.report_to == ["none"] and cfg.max_grad_norm is None
