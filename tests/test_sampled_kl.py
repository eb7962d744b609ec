"""evaluation.sampled_kl: the Monte-Carlo sequence KL used by the off-policy sweep."""

import copy

import pytest
import torch

from asyncrl.evaluation import sampled_kl
from asyncrl.policy import BUILTIN_MODELS, encode_prompts, load_model, load_tokenizer

BASE = str(BUILTIN_MODELS["arithmetic"])
PROMPTS = ["3+4=", "12+7=", "9+9="]


def test_zero_against_itself():
    tok, model = load_tokenizer(BASE), load_model(BASE, torch.device("cpu"))
    assert sampled_kl(model, model, tok, PROMPTS, samples_per_prompt=4, max_new_tokens=4) == 0.0


def test_matches_exact_kl_for_one_token_completions():
    # With one new token, the sequence KL is the first-token KL, which we can enumerate exactly.
    torch.manual_seed(0)
    tok, ref = load_tokenizer(BASE), load_model(BASE, torch.device("cpu"))
    pi = copy.deepcopy(ref)
    with torch.no_grad():
        pi.lm_head.weight.add_(0.3 * torch.randn_like(pi.lm_head.weight))
    ids = encode_prompts(tok, PROMPTS, "auto")
    exact = []
    with torch.no_grad():
        for p in ids:
            x = torch.tensor([p])
            lp = torch.log_softmax(pi(x).logits[0, -1].float(), -1)
            lr = torch.log_softmax(ref(x).logits[0, -1].float(), -1)
            exact.append(float((lp.exp() * (lp - lr)).sum()))
    est = sampled_kl(pi, ref, tok, PROMPTS, samples_per_prompt=3000, max_new_tokens=1)
    truth = sum(exact) / len(exact)
    assert truth > 0.01
    assert est == pytest.approx(truth, rel=0.1)
