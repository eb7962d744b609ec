"""``--prompt-sharding``: each generator slot draws a disjoint shard of the training prompts (TBA's
searchers), kept by a replacement generator and across a resume."""

from __future__ import annotations

import json
import os
import signal
import zlib
from itertools import islice
from pathlib import Path

import pytest

from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.generator import in_shard
from asyncrl.policy import BUILTIN_MODELS
from asyncrl.runtime.controller import Controller
from asyncrl.tasks import make_task

from conftest import run_killing_a_busy_worker

BASE = str(BUILTIN_MODELS["arithmetic"])


def _rows(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+1=", "answer": i + 1}) + "\n" for i in range(n)))
    return path


def _custom(tmp_path: Path, n: int, **kw) -> Config:
    return Config(task="custom", model=BASE, prompts=str(_rows(tmp_path, n)), prompt_field="question",
                  reward_funcs=["tests.reward_fns:exact"], **kw)


def test_a_prompt_list_is_split_by_position_into_disjoint_covering_shards(tmp_path):
    task = make_task(_custom(tmp_path, 7))
    pool = task.train_pool()
    shards = [{p.prompt_id for p in pool if in_shard(task, (slot, 3))(p)} for slot in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]  # every third prompt from the slot: as even as it gets
    assert set().union(*shards) == {p.prompt_id for p in pool} and sum(map(len, shards)) == 7
    # A stream filtered to a shard goes through that shard only, every prompt of it each epoch.
    stream = filter(in_shard(task, (1, 3)), task.train_prompts(seed=4))
    assert [p.prompt_id for p in islice(stream, 4)] and {p.prompt_id for p in islice(stream, 20)} == shards[1]


def test_procedural_prompts_are_sharded_by_a_stable_hash():
    task = make_task(Config())  # arithmetic: an endless generated stream, no list
    keep = in_shard(task, (1, 2))
    drawn = list(islice(filter(keep, task.train_prompts(seed=0)), 50))
    assert all(zlib.crc32(p.prompt_id.encode()) % 2 == 1 for p in drawn)


def test_too_few_prompts_for_the_shards_is_one_line_before_anything_runs(tmp_path, capsys):
    code = main(["train", "--task", "custom", "--model", BASE, "--prompts", str(_rows(tmp_path, 2)),
                 "--prompt-field", "question", "--reward-funcs", "tests.reward_fns:exact", "--num-generators", "3",
                 "--workers", "thread", "--prompt-sharding", "true", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "needs at least num_generators prompts" in err and not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_generators_draw_disjoint_shards_and_a_replacement_keeps_its_slots(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # tests.reward_fns for the worker processes
    cfg = _custom(tmp_path, 12, num_generators=2, workers="process", prompt_sharding=True, max_lag=2, steps=10,
                  prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4, eval_every=0,
                  output_dir=str(tmp_path / "run"))
    controller = Controller(cfg, tmp_path / "run")
    drawn: dict[int, set[str]] = {0: set(), 1: set()}  # slot -> prompt ids trained on
    record = type(controller)._admit

    def spy(self, done):
        drawn[self._pool.slot_of[done.worker_id]].update(g.prompt.prompt_id for g in done.groups)
        return record(self, done)

    monkeypatch.setattr(type(controller), "_admit", spy)
    summary, killed = run_killing_a_busy_worker(controller, lambda w: os.kill(w.pid, signal.SIGKILL))
    assert killed and summary["generator_restarts"] == 1 and summary["steps"] == 10
    task = make_task(cfg)
    for slot in (0, 1):
        shard = {p.prompt_id for p in task.train_pool() if in_shard(task, (slot, 2))(p)}
        assert drawn[slot] and drawn[slot] <= shard, slot  # the replacement drew from its slot's shard too
    assert not drawn[0] & drawn[1]


@pytest.mark.e2e
def test_a_resumed_run_keeps_each_slots_shard(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    kw = dict(num_generators=2, workers="process", prompt_sharding=True, max_lag=1, prompts_per_step=2,
              samples_per_prompt=2, max_new_tokens=4, eval_every=0, save_every=2)
    first = _custom(tmp_path, 10, steps=4, output_dir=str(tmp_path / "run"), **kw)
    assert Controller(first, tmp_path / "run").run()["steps"] == 4
    drawn: dict[int, set[str]] = {0: set(), 1: set()}
    record = Controller._admit

    def spy(self, done):
        drawn[self._pool.slot_of[done.worker_id]].update(g.prompt.prompt_id for g in done.groups)
        return record(self, done)

    monkeypatch.setattr(Controller, "_admit", spy)
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "8"]) == 0  # the checkpoint's config
    task = make_task(first)
    for slot in (0, 1):
        assert drawn[slot] and drawn[slot] <= {p.prompt_id for p in task.train_pool() if in_shard(task, (slot, 2))(p)}
