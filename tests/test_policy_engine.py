import torch

from asyncrl.engines import make_engine
from asyncrl.policy import completion_logprobs, encode_prompts, load_model, load_tokenizer, pack


def _setup(path):
    tok = load_tokenizer(path)
    model = load_model(path, torch.device("cpu"))
    return tok, model


def test_behaviour_logprobs_match_learner_logprobs(tiny_model_dir):
    # The engine's incremental (KV-cache, left-padded) log-probs must equal the learner's full
    # forward pass: otherwise every "on-policy" ratio would be off before any staleness.
    tok, model = _setup(tiny_model_dir)
    torch.manual_seed(0)
    eng = make_engine("hf", model, tok, max_new_tokens=6, temperature=0.7)
    prompts = encode_prompts(tok, ["12+3=", "7-45=", "1="])
    groups = eng.generate(prompts, k=3)
    assert [len(g) for g in groups] == [3, 3, 3]
    rows_p = [p for p, g in zip(prompts, groups) for _ in g]
    rows_c = [c.ids for g in groups for c in g]
    beh = [c.logprobs for g in groups for c in g]
    batch = pack(rows_p, rows_c, tok.pad_token_id)
    with torch.no_grad():
        logp = completion_logprobs(model, batch, temperature=0.7)
    for i, b in enumerate(beh):
        assert len(b) == len(rows_c[i]) > 0
        torch.testing.assert_close(logp[i, : len(b)], torch.tensor(b), atol=1e-4, rtol=1e-4)
    for g in groups:
        for c in g:
            assert c.finished == (c.ids[-1] == tok.eos_token_id)
            assert c.finished or len(c.ids) == 6


def test_load_weights_changes_generation_without_rebuild(tiny_model_dir):
    tok, model = _setup(tiny_model_dir)
    eng = make_engine("hf", model, tok, max_new_tokens=5, temperature=1.0)
    prompts = encode_prompts(tok, ["12+3="])
    before = eng.generate(prompts, k=1, greedy=True)[0][0].ids
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    eng.load_weights(state, version=7)
    assert eng.version == 7 and eng.model is model
    after = eng.generate(prompts, k=1, greedy=True)[0][0].ids
    torch.testing.assert_close(model.state_dict()["lm_head.weight"], state["lm_head.weight"])
    assert before != after


def test_chat_template_used_when_present(tmp_path):
    from conftest import build_tiny_model_dir

    path = build_tiny_model_dir(tmp_path, chat_template="{% for m in messages %}<s>u:{{ m['content'] }}|{% endfor %}a:")
    tok = load_tokenizer(str(path))
    ids = encode_prompts(tok, ["1+1="])[0]
    assert tok.decode(ids) == "<s>u:1+1=|a:"
    assert encode_prompts(tok, ["1+1="], chat_template="never")[0] == tok("1+1=")["input_ids"]
