"""config.yaml files written before the nested config (flat, every field) load with the same meaning.

The fixtures in tests/data/old_configs/ were written by asyncrl 1948c35 (the last flat config):
``asyncrl config ...`` for train runs (default, gsm8k, custom with reward funcs, ray, lora + grpo +
tba) and ``save_config`` of an ``asyncrl sft`` config, as run folders hold them.
"""

from pathlib import Path

import pytest
import yaml

from asyncrl.checkpoint import TRAINER_STATE, resume_config
from asyncrl.config import COMMANDS, ConfigError, flat_fields, leaf_values, load_config, validated

OLD = Path(__file__).parent / "data" / "old_configs"
FILES = {"default.yaml": "train", "gsm8k.yaml": "train", "custom.yaml": "train", "ray.yaml": "train",
         "lora_grpo.yaml": "train", "sft.yaml": "sft"}


@pytest.mark.parametrize("name", list(FILES))
def test_an_old_flat_config_loads_with_the_same_meaning(name):
    command = FILES[name]
    old = yaml.safe_load((OLD / name).read_text())
    cfg = load_config(OLD / name, command=command)
    values = leaf_values(cfg)
    for k, v in old.items():
        if k == "reward":  # the deprecated spelling, folded into reward_funcs
            continue
        if k in values:
            assert values[k] == v, (k, values[k], v)
    # what the new config does not hold: other kinds' / other commands' fields, which held defaults
    dropped = set(old) - set(values) - {"reward"}
    own = flat_fields(COMMANDS[command])
    for k in dropped:
        f = own.get(k)
        assert f is None or f.union or k.startswith("lora_") or k.startswith("vllm_"), k
    # and it round-trips through the new (nested) form
    assert validated(cfg.model_dump(), command) == cfg


def test_old_files_pick_the_kinds_they_name():
    assert load_config(OLD / "gsm8k.yaml").task.gsm8k_data == "openai/gsm8k"
    custom = load_config(OLD / "custom.yaml").task
    assert custom.reward_funcs == ["tests.reward_fns:exact", "models/rm"] and custom.reward_weights == [1.0, 0.5]
    ray = load_config(OLD / "ray.yaml")
    assert ray.runtime.name == "ray" and ray.runtime.learner_num_cpus == 2 and ray.asynchrony.num_generators == 2
    lora = load_config(OLD / "lora_grpo.yaml")
    assert lora.lora.rank == 8 and lora.lora.alpha == 16 and lora.loss.is_low == 0.3
    assert lora.buffer.name == "tba" and lora.buffer.recency_prob == 0.3
    assert load_config(OLD / "default.yaml").lora is None
    sft = load_config(OLD / "sft.yaml", command="sft")
    assert sft.data.path == "rows.jsonl" and sft.data.epochs == 2 and sft.data.batch_size == 4


def test_an_old_file_with_a_non_default_field_of_another_kind_is_refused(tmp_path):
    old = yaml.safe_load((OLD / "default.yaml").read_text())
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**old, "gsm8k_data": "elsewhere"}))
    with pytest.raises(ConfigError, match="gsm8k_data is not used by task 'arithmetic'.*pass --task gsm8k"):
        load_config(p)


def _checkpoint(tmp_path, name) -> Path:
    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    ckpt.mkdir(parents=True)
    (ckpt / TRAINER_STATE).write_bytes(b"")  # resume_config reads only the config
    (ckpt / "config.yaml").write_text((OLD / name).read_text())
    return ckpt


@pytest.mark.parametrize("name", ["default.yaml", "custom.yaml", "lora_grpo.yaml", "ray.yaml"])
def test_a_run_folder_with_an_old_config_resumes(tmp_path, name):
    ckpt = _checkpoint(tmp_path, name)
    cfg = resume_config({"resume": str(ckpt), "steps": 1000})
    old = load_config(OLD / name)
    assert cfg.steps == 1000 and cfg.output_dir == str(tmp_path / "run")
    assert cfg.model_dump(exclude={"steps", "output_dir", "resume"}) == old.model_dump(
        exclude={"steps", "output_dir", "resume"})


def test_resuming_an_old_run_with_another_algorithm_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path, "lora_grpo.yaml")
    with pytest.raises(ConfigError, match=r"different algorithm: .*is_low \(0.3 -> 0.4\)"):
        resume_config({"resume": str(ckpt), "is_low": 0.4})
    cfg = resume_config({"resume": str(ckpt), "loss": "ppo", "resume_force": True, "off_policy_correction": "none"})
    assert cfg.loss.name == "ppo" and cfg.loss.variant == "ppo"  # the new loss's defaults, not grpo's settings


@pytest.mark.parametrize("name", list(FILES))
def test_a_run_config_of_any_form_serves_every_command(tmp_path, name):
    # asyncrl eval reads a run's config.yaml (old flat or nested, of train or sft): what eval does not
    # have is another command's and is dropped, as from any YAML file
    old = load_config(OLD / name, command=FILES[name])
    for form, data in (("old", yaml.safe_load((OLD / name).read_text())), ("nested", old.model_dump())):
        p = tmp_path / f"{form}.yaml"
        p.write_text(yaml.safe_dump(data))
        ev = load_config(p, command="eval")
        assert ev.model == old.model and leaf_values(ev)["task"] == leaf_values(old).get("task", "arithmetic")
        if FILES[name] == "train":
            assert ev.sampling.max_new_tokens == old.sampling.max_new_tokens
