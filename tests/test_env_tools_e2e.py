"""The built-in tool environment ``calculator`` end to end, sync and async: a tiny chat model (a
character tokenizer with a ChatML template) whose sampling is scripted to call the tool and then
answer with the tool's result, so every part runs for real (prompts in the chat template, tool
calls parsed and executed, tool responses rendered as ``tool`` messages, masks, the learner,
greedy evaluation) and the reward says whether the whole loop carried the numbers through."""

from __future__ import annotations

import json
import re

import pytest
import torch

from asyncrl.cli import main
from asyncrl.engines.base import Completion
from asyncrl.engines.hf import HFEngine

from conftest import assert_accounting, read_jsonl

pytestmark = pytest.mark.e2e

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """A 2-layer Llama over printable ASCII, one token per character, ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-chat")
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<pad>",
                                  additional_special_tokens=["<|im_start|>"], padding_side="left")
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=None, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=2, pad_token_id=0)
    model.save_pretrained(path)
    return str(path)


def scripted_generate(self, prompts, k, greedy=False, **_):
    """The policy's turns: first a calculator call on the question's expression, then the tool's
    result as the answer (prompt ids ending in a 7 get a wrong answer, so rewards differ)."""
    out = []
    for ids in prompts:
        text = self.tokenizer.decode(ids)
        response = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, re.DOTALL)
        if response:
            turn = f"<answer>{int(response[-1]) + (1 if len(ids) % 7 == 0 else 0)}</answer>"
        else:
            expr = re.findall(r"What is (.*?)\?", text)[-1]
            turn = "<tool_call>\n" + json.dumps({"name": "calculator", "arguments": {"expression": expr}}) + "\n</tool_call>"
        turn_ids = self.tokenizer(turn, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        out.append([Completion(list(turn_ids), [-0.1] * len(turn_ids), True) for _ in range(k)])
    return out


@pytest.mark.parametrize("mode", [["--max-lag", "0"], ["--max-lag", "1", "--workers", "thread"]])
def test_calculator_episodes_call_the_tool_and_train(tmp_path, monkeypatch, tiny_chat_model, mode):
    monkeypatch.setattr(HFEngine, "generate", scripted_generate)
    out = tmp_path / "run"
    args = ["train", "--model", tiny_chat_model, "--task", "env", "--env", "calculator",
            "--env-args", '{"min_ops": 1, "max_ops": 1, "eval_size": 6}', "--steps", "3", "--prompts-per-step", "2",
            "--samples-per-prompt", "2", "--max-new-tokens", "80", "--eval-every", "3", "--warmup-steps", "0",
            "--lr", "1e-4", "--loss", "grpo", *mode, "--output-dir", str(out)]
    assert main(args) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    # every episode: a tool call, the response, the answer = two policy turns, none truncated
    fresh = [r for r in rows if r["episode_turns_mean"] is not None]  # async: a row may have no new reply
    assert fresh and all(r["episode_turns_mean"] == 2 and r["episode_truncated_mean"] == 0 for r in fresh)
    # the tool's result made it into the answers (those not made wrong on purpose)
    assert all(0 <= r["reward_mean"] <= 1 for r in rows) and any(r["reward_mean"] > 0 for r in rows)
    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 3] and all(e["turns_mean"] == 2 and e["accuracy"] > 0 for e in evals)
    shown = read_jsonl(out / "generations.jsonl")  # the evaluation episodes, observations in their roles
    assert shown and all(re.fullmatch(r'<tool_call>\n\{"name": "calculator", .*\}\n</tool_call><\|im_end\|>\n'
                                      r"<\|im_start\|>tool\n<tool_response>\n(-?\d+)\n</tool_response><\|im_end\|>\n"
                                      r"<\|im_start\|>assistant\n<answer>-?\d+</answer><\|im_end\|>", g["completion"])
                          for g in shown)
    assert_accounting(json.loads((out / "summary.json").read_text()))
