"""Learning tests: RL must lift greedy accuracy on the built-in arithmetic task."""

import json

import pytest

from asyncrl.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes each on a 2-core machine


@pytest.mark.parametrize("max_lag", [0, 2])
def test_tb_lifts_arithmetic_accuracy(tmp_path, max_lag):
    out = tmp_path / "run"
    assert main(["train", "--steps", "300", "--eval-every", "0", "--max-lag", str(max_lag),
                 "--output-dir", str(out)]) == 0
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    start, end = evals[0]["accuracy"], evals[-1]["accuracy"]
    # The base model sits at 0.275 on the 200-problem eval set; 300 steps reach ~0.42 here.
    assert end >= start + 0.08, (start, end)
