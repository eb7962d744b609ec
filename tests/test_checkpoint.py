"""Checkpoints: the resume state round-trips exactly through JSON + safetensors, nothing in a run
folder is unpickled, damaged states are one-line errors, and only the newest folders are kept."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from asyncrl.buffer import FifoBuffer, TbaBuffer
from asyncrl.checkpoint import (
    STATE_JSON, STATE_TENSORS, decode_state, encode_state, find_checkpoint, list_checkpoints, load_trainer_state,
    rng_state, save_checkpoint, save_state, set_rng_state,
)
from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.learner import Learner
from asyncrl.policy import BUILTIN_MODELS, load_model, load_tokenizer
from asyncrl.types import Group, Prompt, Sample

CPU = torch.device("cpu")
BASE = str(BUILTIN_MODELS["arithmetic"])


class Payload:
    """What a tampered pickle could carry: unpickling it would run a shell command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _ckpt(tmp_path, state: dict):
    ckpt = tmp_path / "run" / "checkpoints" / "step_1"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_1\n")
    save_state(ckpt, state)
    (ckpt / "config.yaml").write_text("steps: 1\n")  # resume reads the run's config from here
    return ckpt


def test_the_codec_round_trips_tuples_int_keys_and_tensors_exactly():
    tree = {"a": (1, 2.5, None, True), "opt": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}},
            "nested": [{"x": torch.arange(4, dtype=torch.int64)}, "s"], "nan": float("nan"),
            "tk": {(1, 2): "tuple key"}}
    js, tensors = encode_state(tree)
    back = decode_state(json.loads(json.dumps(js)), tensors)
    assert back["a"] == (1, 2.5, None, True)
    assert set(back["opt"]) == {0} and back["opt"][0]["m"].equal(tree["opt"][0]["m"])
    assert back["nested"][0]["x"].equal(tree["nested"][0]["x"]) and back["nested"][1] == "s"
    assert back["nan"] != back["nan"] and back["tk"] == {(1, 2): "tuple key"}
    with pytest.raises(TypeError, match="cannot save a Payload"):
        encode_state({"x": Payload("m")})


@pytest.mark.parametrize("loss", ["tb", "ppo"])  # ppo: the value head's state too
def test_a_learner_state_round_trips_exactly(tmp_path, loss):
    cfg = Config(loss=loss, samples_per_prompt=2)
    learner = Learner(cfg, load_model(BASE, CPU), None, 0, CPU)
    for p in learner.model.parameters():  # give AdamW some state to save
        p.grad = torch.randn_like(p)
    learner.optimizer.step()
    learner.scheduler.step()
    state = {"learner": learner.state_dict(), "counters": {"samples_seen": 3}}
    loaded = load_trainer_state(_ckpt(tmp_path, state))
    assert loaded["counters"] == {"samples_seen": 3}
    other = Learner(cfg, load_model(BASE, CPU), None, 0, CPU)
    other.load_state_dict(loaded["learner"])
    a, b = learner.optimizer.state_dict(), other.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, st in a["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["state"][i][k]), (i, k)
    assert learner.scheduler.state_dict() == other.scheduler.state_dict()
    assert other.scheduler.get_last_lr() == learner.scheduler.get_last_lr()


def _sample(pid: str, comp: list[int], version: int, reward: float, ref: bool) -> Sample:
    return Sample(pid, [1, 2, 3], comp, [-0.1 * (i + 1) / 3 for i in range(len(comp))], reward, version,
                  bool(version % 2), f"text {comp}", [-0.7 / 3] * len(comp) if ref else None)


def _groups(n: int, k: int, version: int) -> list[Group]:
    return [Group(Prompt(f"p{i % 5}", f"prompt {i % 5}", {"answer": i, "xs": [1, 2]}),
                  [_sample(f"p{i % 5}", [i, j, version], version, random.random(), bool(j % 2)) for j in range(k)])
            for i in range(n)]


@pytest.mark.parametrize("kind", ["fifo", "tba"])
def test_a_buffer_state_round_trips_and_draws_the_same_batches(tmp_path, kind):
    random.seed(0)

    def make():
        return FifoBuffer(max_lag=3) if kind == "fifo" else TbaBuffer(4, 0.5, 1.0, 6, 40, seed=1)

    buf = make()
    for v in range(6):
        buf.add(_groups(7, 4, v))
        buf.sample(3, v + 1)
    state = buf.state_dict()
    tree, tensors = encode_state(state)
    restored = make()
    restored.load_state_dict(decode_state(json.loads(json.dumps(tree)), tensors))
    assert restored.stats() == buf.stats() and len(restored) == len(buf)
    for v in range(6, 10):  # the same future: same adds, same draws, sample for sample
        extra = _groups(5, 4, v)
        buf.add(extra)
        restored.add(extra)
        a, b = buf.sample(3, v + 1), restored.sample(3, v + 1)
        assert (a is None) == (b is None)
        if a is not None:
            assert a.staleness == b.staleness and a.dropped == b.dropped
            assert [s.__dict__ for g in a.groups for s in g.samples] == [s.__dict__ for g in b.groups for s in g.samples]
            assert [g.prompt.__dict__ for g in a.groups] == [g.prompt.__dict__ for g in b.groups]
    assert restored.stats() == buf.stats()


def test_random_states_round_trip():
    state = rng_state()
    tree, tensors = encode_state(state)
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(decode_state(json.loads(json.dumps(tree)), tensors))
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_old_pickled_trainer_states_are_refused_without_running_them(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run" / "checkpoints" / "step_1"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_1\n")
    torch.save({"learner": {"version": 1}, "x": Payload(str(marker))}, ckpt / "trainer_state.pt")
    with pytest.raises(ValueError, match="older asyncrl"):
        find_checkpoint(ckpt)
    # Through the CLI: one line, exit code 2, and nothing ran.
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asyncrl: error:") and not marker.exists()


def test_a_tampered_state_is_a_one_line_error(tmp_path, capsys):
    ckpt = _ckpt(tmp_path, {"learner": {"version": 1}, "t": torch.zeros(10)})
    tree = json.loads((ckpt / STATE_JSON).read_text())
    tree["t"] = {"__tensor__": "t999"}  # names a tensor the file does not hold
    (ckpt / STATE_JSON).write_text(json.dumps(tree))
    with pytest.raises(ValueError) as e:
        load_trainer_state(ckpt)
    assert "damaged" in str(e.value) and "\n" not in str(e.value)
    (ckpt / STATE_JSON).write_text("{not json")
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the trainer state" in err[0]


def test_a_truncated_state_is_a_one_line_error(tmp_path):
    ckpt = _ckpt(tmp_path, {"learner": {"version": 1}, "t": torch.zeros(1000)})
    data = (ckpt / STATE_TENSORS).read_bytes()
    (ckpt / STATE_TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        load_trainer_state(ckpt)
    assert "damaged" in str(e.value) and "\n" not in str(e.value)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model, tok = load_model(BASE, CPU), load_tokenizer(BASE)
    for step in (1, 2, 3, 10):
        save_checkpoint(tmp_path, step, model, tok, {"learner": {"version": step}}, "x: 1\n", keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_3", "step_10"]  # numeric order, not text
    assert find_checkpoint(tmp_path).name == "step_10"
    (tmp_path / "checkpoints" / "latest").unlink()  # a lost pointer: the newest complete folder
    assert find_checkpoint(tmp_path).name == "step_10"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        find_checkpoint(tmp_path / "empty")
    with pytest.raises(ValueError, match="no such folder"):
        find_checkpoint(tmp_path / "nothing")


def test_retention_keeps_the_checkpoint_a_resumed_run_started_from(tmp_path):
    """Replacement generators of a resumed run load its start checkpoint: retention must not
    delete it (the soak test's resumed run hung in a restart loop when it did)."""
    model, tok = load_model(BASE, CPU), load_tokenizer(BASE)
    start = save_checkpoint(tmp_path, 5, model, tok, {"learner": {"version": 5}}, "x: 1\n", keep=1)
    for step in (6, 7, 8):
        save_checkpoint(tmp_path, step, model, tok, {"learner": {"version": step}}, "x: 1\n", keep=1, protect=start)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_5", "step_8"]
    # Loaders that read every *.safetensors file of a model folder (vLLM) must see only the model.
    assert [p.name for p in (tmp_path / "checkpoints" / "step_8").glob("*.safetensors")] == ["model.safetensors"]
