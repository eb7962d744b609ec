"""Shared fixtures: a tiny random Llama with a real character-level HF tokenizer, built in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_tiny_model_dir(path, seed: int = 0, chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    chars = list("0123456789+-=abcdefghijklmnopqrstuvwxyz ?.,:|<>/")
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama")))


def build_tiny_classifier_dir(path, num_labels: int = 1, seed: int = 0, id2label: dict | None = None,
                              chat_template: str | None = None, head_scale: float = 1.0):
    """A tiny ``LlamaForSequenceClassification`` (reward model / toxicity classifier) with the char
    tokenizer of :func:`build_tiny_model_dir`; ``head_scale`` widens the spread of its outputs."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    build_tiny_model_dir(path, seed=seed, chat_template=chat_template)  # tokenizer (+ a causal LM, replaced)
    cfg = LlamaConfig.from_pretrained(path)
    cfg.architectures = None
    cfg.num_labels = num_labels
    if id2label is not None:
        cfg.id2label = {int(k): v for k, v in id2label.items()}
        cfg.label2id = {v: int(k) for k, v in id2label.items()}
    torch.manual_seed(seed + 100)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.mul_(head_scale)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory):
    """A one-output reward model."""
    return build_tiny_classifier_dir(tmp_path_factory.mktemp("tiny-rm"), num_labels=1, seed=3, head_scale=50.0)


@pytest.fixture(scope="session")
def tiny_toxicity_dir(tmp_path_factory):
    """A two-label classifier whose label 1 is named ``toxic``."""
    return build_tiny_classifier_dir(tmp_path_factory.mktemp("tiny-tox"), num_labels=2, seed=4,
                                     id2label={0: "neutral", 1: "toxic"}, head_scale=50.0)


def run_killing_a_busy_worker(ctl, kill, after_rows: int = 3, timeout_s: float = 120.0):
    """Runs controller ``ctl`` while a thread waits for ``after_rows`` metrics rows and then calls
    ``kill(worker)`` once, from outside the controller, on a worker holding a request. Returns
    (summary, ids of the killed workers)."""
    import threading
    import time

    killed: list[int] = []
    metrics = Path(ctl.run_dir) / "metrics.jsonl"

    def killer():
        deadline = time.time() + timeout_s
        while time.time() < deadline and not killed:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= after_rows and ctl.scheduler:
                busy = [w for wid, w in list(ctl.workers.items()) if ctl.scheduler.held_by(wid)]
                if busy:
                    kill(busy[0])
                    killed.append(busy[0].worker_id)
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    summary = ctl.run()
    t.join(5)
    return summary, killed


def assert_accounting(summary: dict) -> None:
    """fifo: every generated sample was trained, is still in the buffer, was dropped, or was
    filtered (dynamic sampling)."""
    a = summary["accounting"]
    assert a["samples_generated"] == (a["samples_trained"] + a["samples_in_buffer"] + a["samples_dropped"]
                                      + a.get("samples_filtered", 0)), a


def wait_for_rows(metrics: Path, n: int, timeout_s: float = 120.0) -> bool:
    """True once ``metrics`` (a metrics.jsonl) holds ``n`` rows, False after ``timeout_s``."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= n:
            return True
        time.sleep(0.2)
    return False


def micro_batch_run(loss_fn, data: dict, groups: int):
    """A loss on a whole batch and on micro-batches of 1 and ``groups - 1`` whole groups (each part
    weighted by its share of the groups): what micro-batch invariance tests compare. ``data`` holds
    LossInputs fields; ``logp`` and ``values`` are the leaves. Returns (full loss, full metrics,
    summed micro-batch loss, (logp, values) leaves of the full run, (logp, values) of the parts)."""
    from asyncrl.losses import LossInputs

    k = data["group_size"]

    def leaves():
        return tuple(data[key].clone().requires_grad_(True) for key in ("logp", "values"))

    full_leaves = leaves()
    full, metrics = loss_fn(LossInputs(**{**data, "logp": full_leaves[0], "values": full_leaves[1]}))
    full.backward()
    part_leaves = leaves()
    total = 0.0
    for first, last in ((0, 1), (1, groups)):
        rows = slice(first * k, last * k)
        sliced = {key: (v[rows] if torch.is_tensor(v) else v) for key, v in data.items()}
        sliced.update(logp=part_leaves[0][rows], values=part_leaves[1][rows])
        part, _ = loss_fn(LossInputs(**sliced))
        weighted = part * (last - first) / groups
        weighted.backward()
        total += weighted.item()
    return full, metrics, total, full_leaves, part_leaves
