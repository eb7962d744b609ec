"""Helpers shared by the benchmark scripts: launching ``asyncrl train`` runs, reading their
output, and summarising repeats as median and spread."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from asyncrl.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def train_cmd(run_dir: Path, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "asyncrl.cli", "train", "--output-dir", str(run_dir), *flags]


def run_once(run_dir: Path, cmd: list[str], quiet: bool = True, env: dict | None = None) -> dict:
    """Runs ``cmd``, which writes a run into ``run_dir`` (skipped when ``run_dir`` already holds a
    finished run, so an interrupted benchmark resumes), and returns the run's ``summary.json``.
    ``env`` adds environment variables."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        print("+", " ".join(cmd), flush=True)
        if run_dir.exists():  # a half-written run from an interrupted benchmark
            shutil.rmtree(run_dir)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None,
                       env={**os.environ, "CI": "1", **(env or {})})
    return json.loads(summary.read_text())


def run_train(run_dir: Path, flags: list[str], quiet: bool = True) -> dict:
    """One ``asyncrl train`` run (see :func:`run_once`); returns its ``summary.json``."""
    return run_once(run_dir, train_cmd(run_dir, flags), quiet)


def run_many(jobs: list[tuple[Path, list[str]]], parallel: int) -> list[dict]:
    """Runs ``(run_dir, flags)`` jobs, ``parallel`` at a time, in order; returns their summaries."""
    if parallel <= 1:
        return [run_train(d, f) for d, f in jobs]
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda job: run_train(*job), jobs))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def first_reach(run_dir: Path, target: float) -> tuple[int, float] | None:
    """(step, training wall-clock with evaluation excluded) of the first evaluation reaching
    ``target`` accuracy, or None."""
    for row in read_jsonl(run_dir / "eval.jsonl"):
        if row.get("accuracy") is not None and row["accuracy"] >= target:
            return row["step"], row["wall_time_s"]
    return None


def time_to_target(run_dir: Path, target: float) -> float | None:
    hit = first_reach(run_dir, target)
    return hit[1] if hit else None


def spread(vals) -> dict:
    """Median, min and max of the values that are not None (n counts them)."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt(s: dict, digits: int = 1) -> str:
    if s["median"] is None:
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def machine() -> dict:
    """What the figures were measured on, stored beside them."""
    import platform

    import torch

    return {
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def simulated_cluster(node_cpus: int):
    """A ``ray.cluster_utils.Cluster`` on this machine: a head node for the learner (``learner_node``)
    and two worker nodes of ``node_cpus`` logical CPUs with a ``gen_node`` resource each, for
    generators spread over them. The caller shuts it down."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus, "resources": {"learner_node": 1}})
    for _ in range(2):
        cluster.add_node(num_cpus=node_cpus, resources={"gen_node": node_cpus})
    cluster.wait_for_nodes()
    return cluster
