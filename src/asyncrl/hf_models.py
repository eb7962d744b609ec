"""Reward-side Hugging Face models: reward models (the ``reward_model`` task, model folders among a
custom task's reward functions) and the ``redteam`` task's victim, classifier and encoder.

Reward models, toxicity classifiers, victim models and embedding encoders are named by folder in
the config and loaded *lazily*, on their first use, on ``reward_device``: every generator worker
(thread or spawned process) builds its own task with :func:`asyncrl.tasks.make_task`, so nothing
heavy may happen at construction or import. Construction only checks cheaply (``config.json``) that
a folder holds the kind of model it should, so a wrong path fails at start-up with one line.

All batched forwards here are right-padded with an attention mask: decoder-only classifiers
(``LlamaForSequenceClassification``) read the head at the last non-pad token and compute positions
from 0, so a text scores the same alone or in a batch; encoders (BERT-style) ignore padding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from asyncrl.policy import LOAD_LOCK, default_dtype, encode_texts, resolve_device, right_pad


def read_model_config(path: str, what: str, flag: str) -> dict:
    """``config.json`` of a model folder, or a one-line ValueError naming the flag to fix."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{what} not found: {path} (set {flag})")
    f = p / "config.json"
    if not p.is_dir() or not f.is_file():
        raise ValueError(f"{what} {path} is not a Hugging Face model folder (no config.json; set {flag})")
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path}: cannot read config.json ({e})") from None


def check_classifier_folder(path: str, what: str, flag: str, num_labels: int | None = None) -> dict:
    """A sequence-classification folder (``architectures`` ends in ``ForSequenceClassification``)."""
    conf = read_model_config(path, what, flag)
    archs = conf.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"{what} {path} is not a sequence-classification model (architectures: "
                         f"{', '.join(archs) or 'none'}); set {flag}")
    if num_labels is not None:
        n = len(conf.get("id2label") or {}) or conf.get("num_labels") or 2
        if n != num_labels:
            raise ValueError(f"{what} {path} has {n} outputs; expected {num_labels} (a reward model: num_labels=1)")
    return conf


def check_causal_lm_folder(path: str, what: str, flag: str) -> dict:
    conf = read_model_config(path, what, flag)
    archs = conf.get("architectures") or []
    if archs and not any(str(a).endswith("ForCausalLM") or "ConditionalGeneration" in str(a) for a in archs):
        raise ValueError(f"{what} {path} is not a causal LM (architectures: {', '.join(archs)}); set {flag}")
    return conf


def aux_device(name: str) -> torch.device:
    """``reward_device`` -> a torch device (``auto``: cuda when available)."""
    if name == "auto":
        return resolve_device("auto")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"reward_device={name} but no CUDA GPU is visible to torch")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"reward_device={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def fallback_token(tokenizer) -> int:
    for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id):
        if t is not None:
            return t
    return 0


def load_classifier(path: str, device: torch.device):
    """(model, tokenizer, pad id) for a sequence-classification folder; eval mode, no grad. The
    model's config learns the pad id, so its head reads the last non-pad token of right-padded rows."""
    tok = AutoTokenizer.from_pretrained(path)
    with LOAD_LOCK:  # see policy.LOAD_LOCK: thread workers load models concurrently
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=default_dtype(device))
    pad = model.config.pad_token_id
    if pad is None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        pad = fallback_token(tok)
    model.config.pad_token_id = pad
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().pad_token_id = pad
    return model.to(device).eval().requires_grad_(False), tok, pad


def max_input_tokens(model, limit: int) -> int:
    n = getattr(model.config, "max_position_embeddings", None)
    return min(limit, n) if isinstance(n, int) and n > 0 else limit


@torch.no_grad()
def classifier_logits(model, seqs: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Head outputs [N, num_labels] (float, CPU) of token sequences, right-padded into one batch."""
    ids, attn = right_pad(seqs, pad_id)  # [N, W] each
    out = model(input_ids=ids.to(device), attention_mask=attn.to(device))
    return out.logits.float().cpu()


class RewardModelScorer:
    """One reward model (a folder with a one-output head), loaded on the first :meth:`score`.

    A (prompt, completion) pair is encoded exactly as ``asyncrl rm --prompt-field`` encodes its
    training pairs (:func:`asyncrl.policy.encode_texts`) and cut to the last
    ``min(max_seq_tokens, max_position_embeddings)`` tokens."""

    def __init__(self, path: str, *, device: str = "auto", batch_size: int = 16, chat_template: str = "auto",
                 max_seq_tokens: int = 1024, what: str = "reward model", flag: str = "--reward-model"):
        check_classifier_folder(path, what, flag, num_labels=1)
        self.path = path
        self.device_name = device
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.max_seq_tokens = max_seq_tokens
        self.model = None

    def _load(self) -> None:
        if self.model is None:
            self.device = aux_device(self.device_name)
            self.model, self.tokenizer, self.pad_id = load_classifier(self.path, self.device)
            self.max_tokens = max_input_tokens(self.model, self.max_seq_tokens)

    def encode(self, prompts: list[str], completions: list[str]) -> list[list[int]]:
        self._load()
        return encode_texts(self.tokenizer, list(completions), list(prompts), self.chat_template, self.max_tokens)[0]

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One float per (prompt, completion), in batches of ``batch_size``."""
        if len(prompts) != len(completions):
            raise ValueError(f"reward: {len(prompts)} prompts but {len(completions)} completions")
        out: list[float] = []
        for i in range(0, len(prompts), self.batch_size):
            seqs = self.encode(prompts[i : i + self.batch_size], completions[i : i + self.batch_size])
            out += classifier_logits(self.model, seqs, self.pad_id, self.device)[:, 0].tolist()
        return out
