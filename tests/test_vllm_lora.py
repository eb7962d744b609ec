"""LoRA with the ``vllm`` engine: the adapter is merged inside vLLM's worker (W0 + alpha/r * B A,
``engines/vllm_worker.py``), so the engine must sample with exactly the learner's (peft's) function
after every adapter update, while weight sync stays adapter-only. Engine-level checks first, then
tiny ``asyncrl train`` runs (sync, async, evaluation engine, resume). vLLM cases skip without vllm,
unless ASYNCRL_REQUIRE_VLLM=1 (CI)."""

from __future__ import annotations

import math

import pytest
import torch

from asyncrl.cli import main
from asyncrl.config import Config
from asyncrl.engines import make_engine
from asyncrl.engines.vllm_worker import fused_group
from asyncrl.lora import adapter_factors, adapter_snapshot, load_policy
from asyncrl.policy import BUILTIN_MODELS, encode_prompts, load_model, load_tokenizer

from conftest import read_jsonl
from test_engines import MAX_NEW, PROMPTS, TEMPERATURE, max_logprob_diff, vllm_or_skip

MODEL = str(BUILTIN_MODELS["arithmetic"])
CPU = torch.device("cpu")
KV = ["--vllm-kv-cache-gb", "0.0625"]


def _lora_cfg(targets: list[str]) -> Config:
    return Config(lora_rank=4, lora_target_modules=targets, max_new_tokens=MAX_NEW, temperature=TEMPERATURE,
                  device="cpu", vllm_dtype="float32", vllm_kv_cache_gb=0.0625, engine="vllm")


def _set_adapter(model, seed: int, scale: float = 0.05) -> None:
    """Random A and B (a fresh adapter has B = 0 and would equal the base trivially)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


# --- pure helpers (no vLLM) ----------------------------------------------------------------------

def test_adapter_factors_pairs_a_and_b_by_module():
    a, b = torch.zeros(4, 128), torch.ones(128, 4)
    state = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b}
    [(module, got_a, got_b)] = adapter_factors(state)
    assert module == "model.layers.0.self_attn.q_proj" and got_a is a and got_b is b
    with pytest.raises(ValueError, match="only one of lora_A/lora_B"):
        adapter_factors({k: v for k, v in state.items() if "lora_B" not in k})
    with pytest.raises(ValueError, match="not a LoRA factor of a linear layer") as e:
        adapter_factors({**state, "base_model.model.model.embed_tokens.lora_embedding_A": a})
    assert "\n" not in str(e.value)


def test_fused_group_gives_every_shard_of_a_fused_vllm_layer():
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    attn = "model.layers.3.self_attn"
    assert fused_group(packed, f"{attn}.v_proj") == [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"]
    assert fused_group(packed, "model.layers.0.mlp.up_proj") == ["model.layers.0.mlp.gate_proj",
                                                                  "model.layers.0.mlp.up_proj"]
    assert fused_group(packed, f"{attn}.o_proj") == [f"{attn}.o_proj"]


def test_lora_with_vllm_is_a_valid_config():
    cfg = Config(lora_rank=4, engine="vllm", eval_engine="vllm")
    assert cfg.lora.rank == 4 and cfg.engine.name == "vllm"


# --- the engine ----------------------------------------------------------------------------------

# q_proj,v_proj: a fused qkv layer only partly adapted (k_proj's W0 must be sent along);
# all-linear: every projection, both fused layers (qkv, gate_up) and the unfused o/down_proj.
@pytest.fixture(scope="module", params=[["q_proj", "v_proj"], ["all-linear"]], ids=["q_v", "all_linear"])
def lora_engine(request):
    vllm_or_skip()
    cfg = _lora_cfg(request.param)
    eng = make_engine(cfg, MODEL, load_tokenizer(MODEL))
    yield cfg, eng
    eng.close()


def test_vllm_engine_samples_with_the_learners_lora_policy_after_each_update(lora_engine):
    cfg, eng = lora_engine
    tok = load_tokenizer(MODEL)
    prompts = encode_prompts(tok, PROMPTS)
    torch.manual_seed(0)
    model = load_policy(cfg, MODEL, CPU).eval()
    base = load_model(MODEL, CPU).eval()
    # The engine starts from the base model; a fresh adapter (B = 0) leaves it there.
    eng.load_weights(adapter_snapshot(model, torch.float32), 0)
    assert max_logprob_diff(base, tok, prompts, eng.generate(prompts, k=4)) < 2e-5
    for version, seed in ((1, 1), (2, 2)):  # the second merge starts from W0 again, not from the first merge
        _set_adapter(model, seed)
        state = adapter_snapshot(model, torch.float32)
        groups = eng.generate(prompts, k=4)  # still the previous weights
        assert max_logprob_diff(model, tok, prompts, groups) > 1e-2
        eng.load_weights(state, version)
        assert eng.version == version
        # fp32 merge W0 + alpha/r * B A against peft's unmerged forward: rounding only.
        assert max_logprob_diff(model, tok, prompts, eng.generate(prompts, k=4)) < 2e-5
    # W0 is read once: the fused layers' base tensors only, never the whole model.
    [w0_bytes] = eng.llm.collective_rpc("asyncrl_lora_base_bytes")
    per_layer = 128 * 128 * 4  # one 128 x 128 fp32 projection
    want = {"q_proj,v_proj": 4 * 3 * per_layer,  # q, k, v of 4 layers
            "all-linear": 4 * (4 + 3 * 3) * per_layer}  # + o_proj, gate/up/down (128 x 384)
    assert w0_bytes == want[",".join(cfg.lora.target_modules)]
    _set_adapter(model, 0, scale=0.0)
    eng.load_weights(adapter_snapshot(model, torch.float32), 0)  # back to the base for the next test


def test_an_adapter_update_for_other_modules_is_refused(lora_engine):
    cfg, eng = lora_engine
    state = adapter_snapshot(load_policy(cfg, MODEL, CPU), torch.float32)
    eng.load_weights(state, 0)
    partial = {k: v for k, v in state.items() if ".layers.0." not in k}
    with pytest.raises(ValueError, match="every update must carry the whole adapter") as e:
        eng.load_weights(partial, 1)
    assert "\n" not in str(e.value) and eng.version == 0


def test_a_target_vllm_cannot_load_is_a_one_line_error(lora_engine):
    _, eng = lora_engine
    # The tied LM head has no weight of its own in the checkpoint (it is the embedding's).
    head = {"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 128),
            "base_model.model.lm_head.lora_B.weight": torch.zeros(17, 4)}
    # Factors that do not fit the module's weight (as a transposed Conv1D layer's would not).
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    misfit = {f"{q}.lora_A.weight": torch.zeros(4, 64), f"{q}.lora_B.weight": torch.zeros(128, 4)}
    modules = eng._lora_modules
    eng._lora_modules = None  # as a fresh engine's first update
    try:
        for state, match in ((head, "lm_head has no weight lm_head.weight"), (misfit, "do not fit its weight")):
            with pytest.raises(ValueError, match=match) as e:
                eng.load_adapter(state)
            assert "\n" not in str(e.value)
    finally:
        eng._lora_modules = modules


# --- end to end ----------------------------------------------------------------------------------

# lr 1e-2: large enough that 2-4 steps of a rank-4 q/v adapter change greedy completions (at 1e-3
# the step-4 checkpoint still answered the 8 problems exactly like the base model).
FLAGS = ["--steps", "4", "--prompts-per-step", "4", "--samples-per-prompt", "4", "--eval-every", "2",
         "--eval-limit", "8", "--max-new-tokens", "6", "--warmup-steps", "0", "--lr", "1e-2", "--lr-schedule",
         "constant", "--lora-rank", "4", "--lora-target-modules", "q_proj,v_proj"]
ADAPTER_BYTES = 4 * 2 * 2 * 4 * 128 * 4  # 4 layers x (q, v) x (A: 4x128, B: 128x4) fp32


@pytest.mark.e2e
@pytest.mark.parametrize("host", [[], ["--workers", "process", "--eval-engine", "hf"]], ids=["inline", "process"])
def test_on_policy_lora_run_with_vllm_samples_with_the_learners_adapter(tmp_path, host):
    # max_lag 0: every sample comes from the adapter being trained, so a vLLM engine that had not
    # merged the latest adapter would show in engine_logp_abs_diff (the inline generator in the
    # learner's process, or a generator process reached through the queue transport).
    vllm_or_skip()
    out = tmp_path / "run"
    assert main(["train", *FLAGS, *KV, "--engine", "vllm", "--max-lag", "0", *host, "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {r["sync_bytes"] for r in rows} == {ADAPTER_BYTES}
    for r in rows:
        assert r["staleness_max"] == 0
        # The engine's merged fp32 weights against peft's unmerged forward: rounding only.
        assert r["engine_logp_abs_diff"] < 1e-4 and 0 <= r["engine_kl"] < 1e-8
    assert any(r["kl"] != 0 for r in rows)  # the adapter moved away from the reference (the base)
    if not host:  # evaluated with a second vLLM engine in the learner's process (eval_engine = engine)
        assert [e["step"] for e in read_jsonl(out / "eval.jsonl")] == [0, 2, 4]


@pytest.mark.e2e
def test_asynchronous_lora_run_with_a_vllm_generator_process(tmp_path):
    vllm_or_skip()
    out = tmp_path / "run"
    assert main(["train", *FLAGS, *KV, "--engine", "vllm", "--max-lag", "2", "--workers", "process",
                 "--eval-every", "0", "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {r["sync_bytes"] for r in rows} == {ADAPTER_BYTES}
    assert all(r["staleness_max"] <= 2 for r in rows)
    assert any(r["staleness_mean"] > 0 for r in rows)  # really asynchronous
    assert all(math.isfinite(r["engine_kl"]) for r in rows)


@pytest.mark.e2e
def test_lora_vllm_evaluation_after_a_resume_and_of_a_checkpoint_uses_the_current_adapter(tmp_path):
    # hf generators, vLLM evaluation: resumed from the step-2 adapter checkpoint, the evaluation
    # engine is built from the base + that adapter and must then load step 4's adapter; its greedy
    # completions must be those of the step-4 checkpoint evaluated with hf.
    vllm_or_skip()
    out = tmp_path / "run"
    flags = [*FLAGS, "--output-dir", str(out), "--max-lag", "0", "--eval-every", "0", "--eval-log-generations", "8"]
    assert main(["train", *flags, "--steps", "2", "--eval-engine", "hf"]) == 0
    assert main(["train", *flags, *KV, "--steps", "4", "--resume", str(out), "--eval-engine", "vllm"]) == 0
    assert read_jsonl(out / "eval.jsonl")[-1]["step"] == 4
    ev = tmp_path / "eval"
    assert main(["eval", str(out / "checkpoints" / "step_4"), "--eval-engine", "hf", "--eval-limit", "8",
                 "--output-dir", str(ev)]) == 0
    expected = [r["completion"] for r in read_jsonl(ev / "eval_examples.jsonl")]
    logged = [r["completion"] for r in read_jsonl(out / "generations.jsonl") if r["step"] == 4]
    assert logged and logged == expected[: len(logged)]
    # `asyncrl eval` of the LoRA checkpoint with vLLM (the adapter merged into a temporary folder).
    ev_vllm = tmp_path / "eval-vllm"
    assert main(["eval", str(out / "checkpoints" / "step_4"), "--eval-engine", "vllm", "--eval-limit", "8",
                 "--output-dir", str(ev_vllm)]) == 0
    assert [r["completion"] for r in read_jsonl(ev_vllm / "eval_examples.jsonl")] == expected
    # The adapter matters here: the base model answers differently (else this test could not fail).
    base = tmp_path / "base"
    assert main(["eval", MODEL, "--task", "arithmetic", "--eval-engine", "hf", "--eval-limit", "8",
                 "--output-dir", str(base)]) == 0
    assert [r["completion"] for r in read_jsonl(base / "eval_examples.jsonl")][: len(logged)] != logged
