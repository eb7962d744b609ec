"""GPU checks: skipped where torch sees no CUDA device (CI never has one)."""

import json

import pytest
import torch

from asyncrl.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("max_lag", [0, 2])
def test_tiny_run_on_cuda_in_bf16(tmp_path, max_lag):
    out = tmp_path / "run"
    assert main(["train", "--device", "cuda", "--steps", "4", "--prompts-per-step", "4", "--samples-per-prompt",
                 "4", "--eval-every", "0", "--eval-limit", "16", "--max-lag", str(max_lag),
                 "--output-dir", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["staleness_max"] <= max_lag for r in rows)
    cfg = json.loads((out / "checkpoints" / "step_4" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
