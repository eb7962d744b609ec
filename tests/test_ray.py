"""The Ray runtime (``runtime: ray``): generator actors behind the Host protocol, weights through the
object store, a shared reward actor, the learner in an actor, a two-node cluster, and actor faults.

Every test starts its own Ray on this machine (or a ``ray.cluster_utils.Cluster`` of local nodes)
and shuts it down, so no Ray process outlives it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from asyncrl.checkpoint import load_trainer_state
from asyncrl.cli import main  # noqa: E402
from asyncrl.config import Config, load_config  # noqa: E402
from asyncrl.policy import BUILTIN_MODELS, load_model  # noqa: E402
from asyncrl.runtime.controller import Controller  # noqa: E402
from asyncrl.runtime.messages import GenerateRequest, RequestDone, WorkerError, WorkerLost, WorkerReady  # noqa: E402
from asyncrl.runtime.object_store import ObjectRefBox, ObjectStoreReceiver  # noqa: E402
from asyncrl.runtime.ray_host import RayHost  # noqa: E402
from asyncrl.runtime.transport import distinct_bytes, snapshot  # noqa: E402

from conftest import assert_accounting, read_jsonl, run_killing_a_busy_worker, wait_for_rows, write_jsonl  # noqa: E402

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BASE = str(BUILTIN_MODELS["arithmetic"])
TINY = ["--steps", "4", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--eval-every", "2",
        "--eval-limit", "16", "--max-new-tokens", "6", "--warmup-steps", "0", "--lr", "1e-3"]
SMALL = dict(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=6, eval_every=0, eval_limit=8,
             warmup_steps=0, lr=1e-3)
CPU = torch.device("cpu")
READY_LINE = re.compile(r"asyncrl: generator (\d+) ready on node (\w+) ")


@pytest.fixture(autouse=True)
def no_ray_left():
    """Each test starts from no Ray connection and must leave none behind."""
    assert not ray.is_initialized()
    yield
    if ray.is_initialized():
        ray.shutdown()
        pytest.fail("the test left Ray initialised")


def _messages(host, n: int, timeout_s: float = 90.0) -> list:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        msg = host.next_message(1.0)
        if msg is not None:
            out.append(msg)
    assert len(out) == n, f"got {out} before the timeout, wanted {n} messages"
    return out


def _weights():
    return snapshot(load_model(BASE, CPU), torch.float32)


# --- the host --------------------------------------------------------------------------------------

def test_host_serves_two_actors_from_one_put_and_reports_a_killed_actor(caplog):
    caplog.set_level(logging.INFO, logger="asyncrl")
    cfg = Config(runtime="ray", num_generators=2, max_lag=1, **SMALL)
    host = RayHost(cfg, BASE, BASE)
    try:
        w0, w1 = host.start(0, 0), host.start(1, 0)
        ready = _messages(host, 2)
        assert all(isinstance(m, WorkerReady) for m in ready) and sorted(m.worker_id for m in ready) == [0, 1]
        # each generator says where it runs
        logged = "".join(f"asyncrl: {m}\n" for m in caplog.messages)
        assert {int(m.group(1)) for m in READY_LINE.finditer(logged)} == {0, 1}
        update = host.publisher.publish(_weights(), 7)
        assert isinstance(update.payload, ObjectRefBox) and host.publisher.puts == 1
        for w in (w0, w1):
            w.send(update)  # the same update (one object) to both
        w0.send(GenerateRequest(10, 2))
        w1.send(GenerateRequest(11, 3))
        done = {m.request_id: m for m in _messages(host, 2)}
        assert sorted(done) == [10, 11] and all(isinstance(m, RequestDone) for m in done.values())
        assert (done[10].worker_id, done[11].worker_id) == (0, 1)
        assert len(done[10].groups) == 2 and len(done[11].groups) == 3 and done[11].samples == 3 * 4
        # the weights were loaded before the request ran (calls from one caller run in order)
        assert done[10].stats.version == done[11].stats.version == 7
        assert host.publisher.puts == 1

        # kill actor 0 from outside while it holds a request: the host reports it lost, once
        w0.send(GenerateRequest(12, 2))
        w0.send(GenerateRequest(13, 2))
        ray.kill(ray.get_actor(w0.name), no_restart=True)
        lost = _messages(host, 1)[0]
        assert isinstance(lost, WorkerLost) and lost.worker_id == 0 and "killed by `ray.kill`" in lost.reason
        assert not w0.alive() and w1.alive()
        w1.send(GenerateRequest(14, 1))
        (m,) = _messages(host, 1)
        assert isinstance(m, RequestDone) and (m.worker_id, m.request_id) == (1, 14)

        # a replacement takes the freed bundle, gets the latest weights, and serves
        w2 = host.start(2, 7)
        assert w2.bundle == w0.bundle
        assert isinstance(_messages(host, 1)[0], WorkerReady)
        w2.send(update)
        w2.send(GenerateRequest(15, 1))
        (m,) = _messages(host, 1)
        assert (m.worker_id, m.request_id, m.stats.version) == (2, 15, 7)
        assert host.publisher.puts == 1  # the restarted worker read the kept object, no new put

        # an actor that died while only a weight load was pending is lost too (not a driver error)
        ray.kill(w1.actor, no_restart=True)
        w1.send(update)
        (lost,) = _messages(host, 1)
        assert isinstance(lost, WorkerLost) and lost.worker_id == 1 and "during load" in lost.reason
        # Worker.kill (the controller's fault path) is reported the same way
        w2.kill()
        (lost,) = _messages(host, 1)
        assert isinstance(lost, WorkerLost) and lost.worker_id == 2 and not w2.alive()
        assert host.next_message(0.2) is None  # nothing more about the dead ones
    finally:
        host.close()
    assert not ray.is_initialized()  # the host started this Ray, so it shut it down


def test_object_store_weights_equal_the_published_ones_and_tied_tensors_travel_once():
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        from asyncrl.runtime.object_store import ObjectStorePublisher, resolved

        state = _weights()
        assert state["lm_head.weight"] is state["model.embed_tokens.weight"]  # tied in the tiny model
        pub = ObjectStorePublisher()
        update = pub.publish(state, 3)
        naive = sum(t.numel() * t.element_size() for t in state.values())
        assert update.payload.nbytes == distinct_bytes(state) < naive

        @ray.remote
        def read(update):  # what a generator on another worker process sees
            got = ObjectStoreReceiver().receive(update)
            return {k: v.clone() for k, v in got.items()}, got["lm_head.weight"] is got["model.embed_tokens.weight"]

        # publish returned before the put finished (it runs off the learner's thread); the host
        # sends the update once it has the ref
        got, tied = ray.get(read.remote(resolved(update)))
        assert tied
        assert got.keys() == state.keys()
        assert all(torch.equal(got[k], state[k]) for k in state)
        with pytest.raises(TypeError, match="ObjectRefBox"):
            ObjectStoreReceiver().receive(type(update)(3, state))
    finally:
        ray.shutdown()


def test_bad_weights_are_a_worker_error_and_end_that_worker():
    cfg = Config(runtime="ray", num_generators=1, max_lag=1, **SMALL)
    host = RayHost(cfg, BASE, BASE)
    try:
        w = host.start(0, 0)
        assert isinstance(_messages(host, 1)[0], WorkerReady)
        state = _weights()
        state.pop("lm_head.weight")
        state.pop("model.embed_tokens.weight")
        w.send(host.publisher.publish(state, 1))  # load_state_dict(strict=True) raises in the actor
        (err,) = _messages(host, 1)
        assert isinstance(err, WorkerError) and not err.user_error and "Missing key" in err.message
        assert not w.alive()
    finally:
        host.close()


@pytest.mark.parametrize("flags, message", [
    (["--generator-num-gpus", "1"], "runtime=ray: the run's actors reserve 1 GPUs but this machine has 0"),
    (["--num-generators", "2", "--generator-resources", "gen_node=1"],
     "runtime=ray: 2 generators reserve {gen_node: 2} but this machine's Ray has {gen_node: 0}"),
])
def test_a_local_ray_refuses_at_once_what_this_machine_cannot_fit(tmp_path, capsys, flags, message):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["train", *TINY, "--runtime", "ray", "--max-lag", "1", *flags, "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("asyncrl: error: " + message) and "\n" not in err, err


def test_actors_get_absolute_paths_for_files_that_exist_here(tmp_path, monkeypatch):
    from asyncrl.runtime.ray_host import config_for_actors

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    (tmp_path / "rm").mkdir()  # a reward-model folder among the reward functions: a path too
    cfg = Config(task="custom", prompts="p.jsonl", eval_prompts="missing.jsonl", reward_funcs="m:f,rm")
    d = config_for_actors(cfg)
    assert d["task"]["prompts"] == str(tmp_path / "p.jsonl")
    assert d["task"]["reward_funcs"] == ["m:f", str(tmp_path / "rm")]
    assert d["task"]["eval_prompts"] == "missing.jsonl"  # not a path here: as given
    assert d["model"] is None and Config(**d).task.prompts == d["task"]["prompts"]
    d = config_for_actors(Config(task="gsm8k", gsm8k_data="openai/gsm8k"))
    assert d["task"]["gsm8k_data"] == "openai/gsm8k"  # a hub name, not a path here


def test_reward_actor_needs_a_task_with_reward_models():
    with pytest.raises(ValueError, match="task 'arithmetic' has none") as e:
        RayHost(Config(runtime="ray", reward_actor=True), BASE, BASE)
    assert "\n" not in str(e.value)
    assert not ray.is_initialized()  # refused before starting anything


def test_shared_reward_actor_scores_for_the_generators(tmp_path, tiny_model_dir, tiny_rm_dir):
    from asyncrl.tasks import make_task

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "abcdefgh"[: i + 1]} for i in range(4)])
    cfg = Config(runtime="ray", task="reward_model", reward_model=tiny_rm_dir, prompts=str(prompts),
                 reward_device="cpu", reward_actor=True, num_generators=1, max_lag=1, **SMALL)
    host = RayHost(cfg, tiny_model_dir, tiny_model_dir)
    try:
        w = host.start(0, 0)
        assert isinstance(_messages(host, 1)[0], WorkerReady)
        w.send(GenerateRequest(1, 3))
        (done,) = _messages(host, 1)
        assert isinstance(done, RequestDone), done
        # the rewards are the reward model's scores, as a local task computes them
        samples = [s for g in done.groups for s in g.samples]
        local = make_task(cfg)
        want = local.reward([g.prompt for g in done.groups for _ in g.samples], [s.text for s in samples])
        assert [s.reward for s in samples] == pytest.approx(want, abs=1e-5)
        # ... and the model that made them lives in the reward actor, not in the generator
        assert ray.get(host.reward_actor.__ray_call__.remote(lambda self: self.task.rm.model is not None))
        assert ray.get(w.actor.__ray_call__.remote(lambda self: self.service.generator.task._task.rm.model is None))
    finally:
        host.close()


# --- whole runs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_train_on_ray_with_two_generators(tmp_path, capsys, transport):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--runtime", "ray", "--num-generators", "2", "--max-lag", "1",
                 "--weight-transport", transport, "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["staleness_max"] <= 1 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples_seen"] == 4 * 4 * 4 and summary["generator_restarts"] == 0
    assert {int(m.group(1)) for m in READY_LINE.finditer(capsys.readouterr().out)} == {0, 1}


def test_synchronous_run_on_ray_stays_on_policy(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--eval-every", "0", "--runtime", "ray", "--max-lag", "0",
                 "--output-dir", str(out)]) == 0
    assert [r["staleness_max"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 0, 0, 0]


def test_two_node_cluster_spreads_generators_over_both_nodes(tmp_path, capsys):
    from ray.cluster_utils import Cluster

    # Head: the driver (learner) and one generator slot; worker node: one generator slot.
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "resources": {"learner_node": 1, "gen_node": 1}})
    try:
        worker_node = cluster.add_node(num_cpus=1, resources={"gen_node": 1})
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        code = main(["train", *TINY, "--eval-every", "0", "--runtime", "ray", "--ray-address", cluster.address,
                     "--num-generators", "2", "--max-lag", "1", "--generator-resources", "gen_node=1",
                     "--placement-strategy", "SPREAD", "--output-dir", str(out)])
        assert code == 0
        assert not ray.is_initialized()  # the run disconnected; the cluster is the test's
        nodes = {int(m.group(1)): m.group(2) for m in READY_LINE.finditer(capsys.readouterr().out)}
        assert sorted(nodes) == [0, 1] and nodes[0] != nodes[1], nodes
        assert {nodes[0], nodes[1]} == {cluster.head_node.node_id[:12], worker_node.node_id[:12]}
        assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("generation", ["gated", "continuous"])
def test_killed_generator_actor_is_replaced_and_the_run_reaches_its_target(tmp_path, monkeypatch, generation):
    monkeypatch.chdir(ROOT)  # actors import tests.reward_fns from the driver's working directory
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"question": f"{a}+{b}=", "answer": a + b}
                                                  for a, b in [(1, 2), (12, 3), (40, 9), (7, 7), (3, 5)]])
    out = tmp_path / "run"
    cfg = load_config(None, dict(SMALL, steps=10, task="custom", model=BASE, prompts=str(rows),
                                 prompt_field="question", reward="tests.reward_fns:slow_exact", runtime="ray",
                                 num_generators=2, max_lag=2, generation=generation, output_dir=str(out)))
    summary, killed = run_killing_a_busy_worker(Controller(cfg, out),
                                                lambda w: ray.kill(ray.get_actor(w.name), no_restart=True))
    assert killed, "no generator was killed"
    assert summary["steps"] == 10 and not summary["interrupted"] and summary["failed"] is None
    assert summary["generator_restarts"] == 1 and summary["requests_redispatched"] >= 1
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, 11))
    assert all(r["staleness_max"] <= 2 for r in metrics)
    assert_accounting(summary)


def test_reward_error_in_an_actor_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"question": "1+2=", "answer": 3}, {"question": "2+2=", "answer": 4}])
    code = main(["train", "--task", "custom", "--model", BASE, "--prompts", str(rows), "--prompt-field", "question",
                 "--reward", "tests.reward_fns:not_a_list", "--steps", "3", "--prompts-per-step", "2",
                 "--samples-per-prompt", "2", "--eval-every", "0", "--max-new-tokens", "4", "--runtime", "ray",
                 "--max-lag", "1", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("asyncrl: error:")]
    assert code == 1 and len(lines) == 1 and "reward error" in lines[0] and "restart" not in err, err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_learner_actor_run_and_ctrl_c(tmp_path, sig, code):
    """ray_learner=actor: the controller runs in an actor; Ctrl-C (or SIGTERM, what schedulers
    send) in the driver stops it after the current step with a final checkpoint and exit code 130
    (143), as in the driver mode."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncrl.cli", "train", *TINY, "--steps", "100000", "--eval-every", "0",
         "--runtime", "ray", "--ray-learner", "actor", "--max-lag", "1", "--output-dir", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        if not wait_for_rows(out / "metrics.jsonl", 3):
            pytest.fail("run did not start")
        if sig == signal.SIGINT:
            # Ctrl-C in a terminal signals the whole process group: the local Ray's processes too.
            os.killpg(proc.pid, sig)
        else:
            # SIGTERM to the driver (kill PID, `ray job stop`): sent to the whole group it would also
            # stop the local Ray this run started (docs/distributed.md).
            proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == code, stdout
    assert "interrupted at step" in stdout and f"({sig.name})" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["steps"] >= 3
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    state = load_trainer_state(ckpt)
    assert state["learner"]["version"] == summary["steps"]


@pytest.mark.parametrize("learner", ["driver", "actor"])
def test_python_objects_reach_ray_actors(tmp_path, learner):
    from asyncrl import train

    offset = 0.5  # a closure: travels to the actors by value (cloudpickle), as from a notebook

    def shifted(completions, answer, **kwargs):
        return [offset + (1.0 if c.strip() == str(a) else 0.0) for c, a in zip(completions, answer)]

    rows = [{"prompt": f"{a}+{b}=", "answer": a + b} for a, b in [(1, 2), (12, 3), (40, 9), (7, 7)]]
    out = tmp_path / "run"
    summary = train(dict(SMALL, steps=2, model=BASE, runtime="ray", ray_learner=learner, max_lag=1,
                         output_dir=str(out)), reward_funcs=shifted, train_dataset=rows)
    assert summary["steps"] == 2 and not summary["failed"]
    assert all(r["rewards/shifted/mean"] >= offset for r in read_jsonl(out / "metrics.jsonl"))
