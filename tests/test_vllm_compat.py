"""vLLM internals behind one version-gated adapter (engines/vllm_compat.py), and a vLLM engine that
leaves the caller's random states and thread count as it found them (issue 18, item 5)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from asyncrl.engines.vllm_compat import check_version
from asyncrl.policy import BUILTIN_MODELS, encode_prompts, load_tokenizer

from test_engines import VLLM_TEST_KWARGS, vllm_or_skip

ENGINES_DIR = Path(__file__).resolve().parent.parent / "src" / "asyncrl" / "engines"
MODEL = str(BUILTIN_MODELS["arithmetic"])
# Attributes of vLLM objects that are not its public LLM / SamplingParams API.
INTERNALS = {"model_runner", "llm_engine", "engine_core", "_finalizer", "model_executor", "quant_method",
             "packed_modules_mapping", "model_config", "reload_weights", "process_weights_after_loading"}


@pytest.mark.parametrize("version", ["0.32.0", "0.32.7", "0.32.1.dev3+gabc"])
def test_the_tested_release_is_accepted(version):
    check_version(version)


@pytest.mark.parametrize("version", ["0.33.0", "0.31.2", "1.0.0", "dev"])
def test_other_releases_are_a_one_line_error(version):
    with pytest.raises(ValueError, match=r"tested with 0\.32\.x") as e:
        check_version(version)
    assert "\n" not in str(e.value) and version in str(e.value)


def test_only_the_adapter_touches_vllm_internals():
    """The engine and its worker extension name no vLLM internal and import no vLLM submodule."""
    found = []
    for name in ("vllm.py", "vllm_worker.py"):
        tree = ast.parse((ENGINES_DIR / name).read_text())
        for node in ast.walk(tree):
            via_adapter = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id == "vllm_compat"
            if isinstance(node, ast.Attribute) and node.attr in INTERNALS and not via_adapter:
                found.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vllm."):
                found.append(f"{name}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("vllm."):
                found.append(f"{name}:{node.lineno} {node.value!r}")
    assert found == []


def _process_state():
    return (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(), torch.get_num_threads(),
            torch.set_num_threads)


def _same(a, b) -> bool:
    return (torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2]) and a[3] == b[3]
            and a[4] is b[4])


def test_the_engine_leaves_rngs_and_threads_as_it_found_them():
    vllm_or_skip()
    from asyncrl.engines.vllm import VLLMEngine
    from asyncrl.policy import load_model
    from asyncrl.runtime.transport import snapshot

    tok = load_tokenizer(MODEL)
    prompts = encode_prompts(tok, ["12+3=", "7-45=", "99+99="])
    state = snapshot(load_model(MODEL, torch.device("cpu")), torch.float32)  # before: loading may draw
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads != 1 else 2)  # not vLLM's own choice, so that a re-bind would show
    try:
        torch.manual_seed(123)
        before = _process_state()
        eng = VLLMEngine(MODEL, tok, max_new_tokens=6, temperature=1.0, device=torch.device("cpu"),
                         dtype="float32", kv_cache_gb=0.0625, seed=5, llm_kwargs=VLLM_TEST_KWARGS)
        try:
            assert _same(_process_state(), before), "construction"
            first = eng.generate(prompts, k=4)
            assert _same(_process_state(), before), "generate"
            eng.generate(prompts, k=1, greedy=True)
            assert _same(_process_state(), before), "greedy generate"
            eng.load_weights(state, 1)
            assert _same(_process_state(), before), "load_weights"
            # Sampling draws from the engine's own seeds, not the (unchanged) process RNG: a second
            # call samples afresh rather than repeating the first.
            second = eng.generate(prompts, k=4)
            assert [[c.ids for c in g] for g in first] != [[c.ids for c in g] for g in second]
        finally:
            eng.close()
        assert _same(_process_state(), before), "close"
    finally:
        torch.set_num_threads(threads)
