"""The sharded learner on Ray (``--runtime ray --learner-ranks N``): ranks 1..N-1 as actors in a
placement group, on one node or spread over a cluster's nodes, and a killed rank actor."""

from __future__ import annotations

import threading
import time

import pytest

ray = pytest.importorskip("ray")

from asyncrl.cli import main  # noqa: E402
from asyncrl.config import Config  # noqa: E402
from asyncrl.errors import LearnerFailed  # noqa: E402
from asyncrl.runtime.controller import Controller  # noqa: E402

from conftest import read_jsonl  # noqa: E402
from test_ray import no_ray_left  # noqa: E402, F401 - the autouse fixture: no Ray before or after a test

pytestmark = pytest.mark.e2e

SYNC = ["--max-lag", "0", "--eval-every", "0", "--max-new-tokens", "6", "--save-every-minutes", "none"]


@pytest.mark.parametrize("learner", ["driver", "actor"])
def test_rank_actors_train_as_one_local_rank(tmp_path, learner):
    assert main(["train", *SYNC, "--steps", "4", "--output-dir", str(tmp_path / "one")]) == 0
    flags = ["--runtime", "ray", "--workers", "process", "--ray-learner", learner, "--learner-ranks", "2"]
    assert main(["train", *SYNC, "--steps", "4", *flags, "--output-dir", str(tmp_path / "ray")]) == 0
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "ray" / "metrics.jsonl")
    assert [r["reward_mean"] for r in two] == [r["reward_mean"] for r in one]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-5, rel=1e-5)


def test_rank_actors_spread_over_the_nodes_of_a_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        cfg = Config(runtime="ray", workers="process", ray_address=cluster.address, learner_ranks=3,
                     learner_num_nodes=2, max_lag=1, steps=3, eval_every=0, max_new_tokens=6)
        ray.init(address=cluster.address)  # the test's connection: the run leaves it (and the cluster) alone
        try:
            summary = Controller(cfg, tmp_path / "run").run()
            from ray.util.state import list_actors

            # Where Ray put the rank actors (ended by now; Ray keeps their record).
            placed = {a.name.split("-")[2]: a.node_id for a in list_actors(limit=1000)
                      if a.name and a.name.startswith("asyncrl-learner-rank")}
        finally:
            ray.shutdown()
        assert summary["steps"] == 3 and summary["failed"] is None
        assert set(placed) == {"rank1", "rank2"}
        assert {placed["rank1"], placed["rank2"]} == {cluster.head_node.node_id, worker.node_id}
    finally:
        cluster.shutdown()


def test_a_killed_rank_actor_stops_the_run_with_one_line(tmp_path):
    cfg = Config(runtime="ray", workers="process", learner_ranks=2, steps=10_000, max_lag=0, eval_every=0,
                 save_every=2, save_every_minutes=None, learner_timeout_s=60)
    controller = Controller(cfg, tmp_path / "run")
    killed: list[float] = []

    def killer():
        while getattr(getattr(controller, "_learner", None), "version", 0) < 3:
            time.sleep(0.01)
        ray.kill(controller._learner._ranks.actors[0], no_restart=True)
        killed.append(time.monotonic())

    threading.Thread(target=killer, daemon=True).start()
    with pytest.raises(LearnerFailed) as e:
        controller.run()
    message = str(e.value)
    assert "learner rank 1 (a Ray actor) ended" in message and "\n" not in message, message
    assert "the last one is" in message
    assert time.monotonic() - killed[0] < 60
    assert not ray.is_initialized()  # the run's own Ray is gone with it
