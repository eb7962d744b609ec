"""Resume state is read without running code from the file (torch's weights-only unpickler)."""

from __future__ import annotations

import os

import pytest
import torch

from asyncrl.checkpoint import TRAINER_STATE, load_trainer_state
from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.learner import Learner
from asyncrl.policy import BUILTIN_MODELS, load_model

CPU = torch.device("cpu")


class Payload:
    """What a tampered trainer_state.pt could carry: unpickling it would run a shell command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _ckpt(tmp_path, state) -> "os.PathLike":
    ckpt = tmp_path / "run" / "checkpoints" / "step_1"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_1\n")
    torch.save(state, ckpt / TRAINER_STATE)
    return ckpt


@pytest.mark.parametrize("loss", ["tb", "ppo"])  # ppo: the value head's state too
def test_what_a_learner_saves_loads_weights_only(tmp_path, loss):
    cfg = Config(loss=loss, samples_per_prompt=2)
    learner = Learner(cfg, load_model(str(BUILTIN_MODELS["arithmetic"]), CPU), None, 0, CPU)
    for p in learner.model.parameters():  # give AdamW some state to save
        p.grad = torch.ones_like(p)
    learner.optimizer.step()
    state = {"learner": learner.state_dict(), "counters": {"samples_seen": 3}, "torch_rng": torch.get_rng_state()}
    loaded = load_trainer_state(_ckpt(tmp_path, state))
    assert loaded["counters"] == {"samples_seen": 3}
    assert loaded["learner"]["optimizer"]["state"][0]["exp_avg"].equal(state["learner"]["optimizer"]["state"][0]["exp_avg"])
    Learner(cfg, load_model(str(BUILTIN_MODELS["arithmetic"]), CPU), None, 0, CPU).load_state_dict(loaded["learner"])


def test_a_tampered_trainer_state_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = _ckpt(tmp_path, {"learner": {"version": 1}, "x": Payload(str(marker))})
    with pytest.raises(ValueError, match="not a trainer state asyncrl wrote"):
        load_trainer_state(ckpt)
    assert not marker.exists()
    # Through the CLI: one line, exit code 2, and still nothing ran.
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asyncrl: error: cannot read") and not marker.exists()


def test_a_truncated_trainer_state_is_a_one_line_error(tmp_path):
    ckpt = _ckpt(tmp_path, {"learner": {"version": 1}, "t": torch.zeros(1000)})
    data = (ckpt / TRAINER_STATE).read_bytes()
    (ckpt / TRAINER_STATE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        load_trainer_state(ckpt)
    assert "damaged" in str(e.value) and "\n" not in str(e.value)
