"""The lean log-prob path (trunk, then the LM head on completion positions only, in chunks
recomputed in backward) against the model's own full-logits forward: values, gradients, hidden
states, LoRA, and the fallback for heads it does not know."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from asyncrl.policy import BUILTIN_MODELS, completion_logprobs, load_model, pack, trunk_and_head


@pytest.fixture(scope="module")
def model():
    return load_model(str(BUILTIN_MODELS["arithmetic"]), torch.device("cpu"))


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 9, 3, 7)]
    comps = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (6, 0, 11, 4)]  # one empty
    return pack(prompts, comps, 0)


def _run(model, batch, chunk_tokens, with_hidden=False):
    """(masked log-probs, hidden or None, grads) of a weighted sum of the log-probs."""
    model.zero_grad(set_to_none=True)
    out = completion_logprobs(model, batch, 0.7, with_hidden=with_hidden, chunk_tokens=chunk_tokens)
    logp, hidden = out if with_hidden else (out, None)
    w = torch.linspace(0.1, 1.0, logp.numel()).view_as(logp)  # distinct weights: a per-token gradient check
    loss = (logp * batch.completion_mask * w).sum()
    if hidden is not None:
        loss = loss + hidden.sum() * 1e-3
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (logp * batch.completion_mask).detach(), hidden, grads


@pytest.mark.parametrize("chunk_tokens, rtol", [(512, 1e-6), (3, 1e-5)])
def test_lean_values_and_gradients_equal_the_full_logits_path(model, chunk_tokens, rtol):
    # chunk 512 holds the whole batch: one head matmul over the same rows, exact here; chunks of 3
    # change the matmul's shape and so its rounding (measured: 1.7e-6 relative on values).
    batch = _batch(model.config.vocab_size)
    want_v, _, want_g = _run(model, batch, None)
    got_v, _, got_g = _run(model, batch, chunk_tokens)
    assert batch.completion_mask.sum() == 21 and (want_v != 0).sum() == 21
    torch.testing.assert_close(got_v, want_v, rtol=rtol, atol=1e-6)
    assert got_g.keys() == want_g.keys() and len(want_g) == len(list(model.parameters()))
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=rtol, atol=1e-5, msg=name)


def test_lean_hidden_states_are_the_full_paths_last_hidden_states(model):
    batch = _batch(model.config.vocab_size, seed=1)
    _, want_h, want_g = _run(model, batch, None, with_hidden=True)
    _, got_h, got_g = _run(model, batch, 512, with_hidden=True)
    assert got_h.shape == (4, 11, model.config.hidden_size)
    torch.testing.assert_close(got_h, want_h, rtol=1e-6, atol=1e-6)
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-6, atol=1e-5, msg=name)


def test_lean_without_grad_equals_and_keeps_no_graph(model):
    batch = _batch(model.config.vocab_size, seed=2)
    with torch.no_grad():
        want = completion_logprobs(model, batch, 1.0, chunk_tokens=None) * batch.completion_mask
        got = completion_logprobs(model, batch, 1.0, chunk_tokens=2)
    assert not got.requires_grad
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lean_path_through_a_lora_adapter(model):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(load_model(str(BUILTIN_MODELS["arithmetic"]), torch.device("cpu")),
                               peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"]))
    for n, p in lora.named_parameters():
        if "lora_B" in n:  # nonzero B: the adapter changes the log-probs and gets gradients
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(hash(n) % 1000))
    assert trunk_and_head(lora) is not None
    batch = _batch(model.config.vocab_size, seed=3)
    want_v, _, want_g = _run(lora, batch, None)
    got_v, _, got_g = _run(lora, batch, 4)
    torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-6)
    assert any("lm_head" in n for n in want_g) and got_g.keys() == want_g.keys()
    for name, g in want_g.items():
        torch.testing.assert_close(got_g[name], g, rtol=1e-5, atol=1e-5, msg=name)


def test_an_unknown_head_takes_the_full_logits_path():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=1, eos_token_id=2)).eval()  # eval: no dropout
    assert trunk_and_head(gpt2) is None
    batch = _batch(50, seed=4)
    torch.testing.assert_close(completion_logprobs(gpt2, batch, 1.0) * batch.completion_mask,
                               completion_logprobs(gpt2, batch, 1.0, chunk_tokens=None) * batch.completion_mask)


def test_a_batch_without_completion_tokens_still_backpropagates(model):
    from asyncrl.policy import chunked_token_logprobs

    hidden = torch.randn(2, 3, 8, requires_grad=True)
    head = torch.nn.Linear(8, 11)
    out = chunked_token_logprobs(head, hidden, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), 1.0)
    assert out.shape == (2, 3) and not out.any() and out.requires_grad
    out.sum().backward()
    assert not hidden.grad.any()


def _run_free(model, batch, padding_free):
    model.zero_grad(set_to_none=True)
    logp, hidden = completion_logprobs(model, batch, 0.7, with_hidden=True, padding_free=padding_free)
    w = torch.linspace(0.1, 1.0, logp.numel()).view_as(logp)
    m = batch.completion_mask
    ((logp * m * w).sum() + (hidden * m.unsqueeze(-1)).sum() * 1e-3).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return (logp * m).detach(), (hidden * m.unsqueeze(-1)).detach(), grads


def test_padding_free_rows_give_the_padded_values_and_gradients(model):
    # Rows of very different lengths (one completion empty): packed into one [1, T] sequence, kept
    # apart by a block-diagonal mask here (SDPA), by position ids alone under flash-attention.
    batch = _batch(model.config.vocab_size, seed=5)
    a, ha, ga = _run_free(model, batch, padding_free=False)
    b, hb, gb = _run_free(model, batch, padding_free=True)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hb, ha, rtol=1e-5, atol=1e-5)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-4, atol=1e-5, msg=k)
    assert batch.input_ids.numel() > int(batch.attention_mask.sum())  # there was padding to drop


def test_the_packed_row_holds_only_real_tokens(model, monkeypatch):
    from asyncrl.policy import padding_free_hidden

    batch = _batch(model.config.vocab_size, seed=6)
    seen = {}
    trunk, _ = trunk_and_head(model)

    def spy(**kw):
        seen.update(kw)
        return trunk(**kw)

    padding_free_hidden(spy, batch, "flash_attention_2")  # the varlen form: no mask, positions restart per row
    assert seen["attention_mask"] is None
    assert seen["input_ids"].shape == (1, int(batch.attention_mask.sum()))
    starts = (seen["position_ids"][0] == 0).nonzero().squeeze(-1).tolist()
    assert len(starts) == batch.input_ids.shape[0]  # one restart per row
