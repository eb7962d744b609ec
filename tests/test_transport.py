"""Weight transport: the snapshot copies tied tensors once, and every path carries them once."""

from __future__ import annotations

import pickle

import torch

from asyncrl.runtime.messages import WeightsUpdate
from asyncrl.runtime.transport import distinct_bytes, snapshot
from asyncrl.runtime.transports import make_publisher, make_receiver


def _tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    return LlamaForCausalLM(conf)


def test_snapshot_copies_tied_embeddings_once_and_detaches():
    model = _tied_llama()
    state = snapshot(model, torch.float32)
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    emb = 512 * 32 * 4
    assert distinct_bytes(state) == full - emb
    # a copy, not a view: training the model afterwards does not change the published weights
    before = state["model.embed_tokens.weight"].clone()
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    assert torch.equal(state["model.embed_tokens.weight"], before)
    assert all(torch.equal(state[k], v) for k, v in snapshot(_tied_llama(), torch.float32).items())


def test_snapshot_casts_floating_tensors_only():
    model = _tied_llama()
    model.register_buffer("step_count", torch.tensor([3], dtype=torch.long))
    state = snapshot(model, torch.bfloat16)
    assert state["model.norm.weight"].dtype == torch.bfloat16 and state["step_count"].dtype == torch.long


def test_pickled_update_carries_tied_tensor_once():
    # the queue transport pickles the message; Ray's object store pickles it too
    state = snapshot(_tied_llama(), torch.float32)
    update = make_publisher("queue").publish(state, 7)
    assert isinstance(update, WeightsUpdate) and update.version == 7
    size = len(pickle.dumps(update))
    assert distinct_bytes(state) <= size < distinct_bytes(state) * 1.05
    got = make_receiver("queue").receive(pickle.loads(pickle.dumps(update)))
    assert got["lm_head.weight"] is got["model.embed_tokens.weight"]
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_received_weights_load_into_an_engine_and_stay_tied():
    from asyncrl.engines.hf import HFEngine
    from asyncrl.policy import BUILTIN_MODELS, load_tokenizer

    src, dst = _tied_llama(), _tied_llama()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.5)
    engine = HFEngine(dst, load_tokenizer(str(BUILTIN_MODELS["arithmetic"])), max_new_tokens=2, temperature=1.0)
    update = make_publisher("inprocess").publish(snapshot(src, torch.float32), 3)
    engine.load_weights(make_receiver("inprocess").receive(update), update.version)
    assert engine.version == 3
    assert torch.equal(dst.lm_head.weight, src.lm_head.weight)
    assert dst.lm_head.weight.data_ptr() == dst.model.embed_tokens.weight.data_ptr()
