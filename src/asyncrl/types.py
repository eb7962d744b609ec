"""Data that crosses role boundaries: what generators produce and the learner consumes.

Data path: prompts -> Generator (engine samples K completions, task scores them) -> ``Group`` of
``Sample``s -> replay buffer -> learner batch (list of groups) -> loss -> optimizer step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch


@dataclass
class Prompt:
    """One task prompt. ``meta`` carries whatever the reward needs (e.g. the reference answer).

    A conversational prompt (TRL's format: a list of ``{"role", "content"}`` chat messages) keeps
    them in ``messages``, rendered with the tokenizer's chat template; ``text`` is then a readable
    ``role: content`` rendering for logs and error messages."""

    prompt_id: str
    text: str
    meta: dict = field(default_factory=dict)
    messages: list[dict] | None = None

    @property
    def model_input(self) -> str | list[dict]:
        """What :func:`asyncrl.policy.encode_prompts` encodes: the messages, else the text."""
        return self.messages if self.messages is not None else self.text


@dataclass
class Sample:
    """One scored completion.

    Token lists are plain Python lists so samples pickle cheaply across processes.
    """

    prompt_id: str
    prompt_ids: list[int]  # [P] prompt token ids (no padding)
    completion_ids: list[int]  # [C] generated ids, including the EOS token if one was produced
    behaviour_logprobs: list[float]  # [C] temperature-scaled log-probs under the generating policy
    reward: float
    version: int  # learner version of the weights that generated this sample (its oldest token's)
    finished: bool  # True when generation stopped at EOS (not at max tokens)
    text: str = ""  # decoded completion, for logs
    ref_logprobs: list[float] | None = None  # [C] frozen reference log-probs, when the generator computed them
    # [C] the version of the weights that sampled each token (in-flight updates: a sequence may
    # span several); None = every token is ``version``'s
    token_versions: list[int] | None = None
    # [C] 1 = a policy token (trained on), 0 = an environment's (multi-turn episodes: observations are
    # context, with no behaviour log-prob); None = every token is the policy's
    loss_mask: list[int] | None = None

    def versions_of_tokens(self) -> list[int]:
        """[C] each completion token's weights version."""
        return self.token_versions if self.token_versions is not None else [self.version] * len(self.completion_ids)


@dataclass
class Group:
    """K samples of one prompt generated together by one policy version."""

    prompt: Prompt
    samples: list[Sample]  # [K]

    @property
    def version(self) -> int:
        return min(s.version for s in self.samples)


@dataclass(frozen=True)
class GenStats:
    """What one generation request cost."""

    gen_time_s: float  # engine (sampling) time
    score_time_s: float  # decoding, task reward and reference log-probs
    tokens: int  # generated tokens (EOS included)
    version: int  # learner version of the weights that generated the request
    reward_errors: int = 0  # completions whose reward failed (reward_errors=skip; their groups are dropped)
    # custom task: reward function name -> (sum, rows scored) over the kept groups' unshaped values
    reward_components: dict[str, tuple[float, int]] = field(default_factory=dict)
    episodes: int = 0  # episodes rolled out (B*K)
    turns: int = 0  # policy turns over those episodes (single-turn: one each)
    truncated: int = 0  # episodes ended by max_turns / max_episode_tokens


# --- checkpoint form (``checkpoint.py`` writes the tensors to safetensors, the rest to JSON) ---

def _plain(x):
    """numpy scalars/arrays in prompt metadata (parquet rows) -> Python values, for JSON."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"prompt metadata holds a {type(x).__name__}, which a checkpoint cannot store")


def prompt_state(p: Prompt) -> dict:
    return {"prompt_id": p.prompt_id, "text": p.text, "meta": json.loads(json.dumps(p.meta, default=_plain)),
            "messages": p.messages}


def prompt_from_state(d: dict) -> Prompt:
    return Prompt(d["prompt_id"], d["text"], d["meta"], d.get("messages"))


def _cat(rows: list[list], dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows -> (flat values, lengths); float64 keeps Python floats exact."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    flat = [v for r in rows for v in r]
    return torch.tensor(flat, dtype=dtype), lengths


def samples_state(samples: list[Sample]) -> dict:
    """Samples -> ragged tensors (token ids, log-probs) + JSON-able lists (ids, texts)."""
    prompt_ids, prompt_len = _cat([s.prompt_ids for s in samples], torch.int64)
    comp_ids, comp_len = _cat([s.completion_ids for s in samples], torch.int64)
    beh, beh_len = _cat([s.behaviour_logprobs for s in samples], torch.float64)
    ref, ref_len = _cat([s.ref_logprobs or [] for s in samples], torch.float64)
    return {
        "prompt_id": [s.prompt_id for s in samples], "text": [s.text for s in samples],
        "prompt_ids": prompt_ids, "prompt_len": prompt_len, "completion_ids": comp_ids, "completion_len": comp_len,
        "behaviour_logprobs": beh, "behaviour_len": beh_len, "ref_logprobs": ref, "ref_len": ref_len,
        "has_ref": torch.tensor([s.ref_logprobs is not None for s in samples], dtype=torch.bool),
        "reward": torch.tensor([s.reward for s in samples], dtype=torch.float64),
        "version": torch.tensor([s.version for s in samples], dtype=torch.int64),
        "finished": torch.tensor([s.finished for s in samples], dtype=torch.bool),
        # per-token versions only when some sample has them (older checkpoints lack the keys)
        **({"token_versions": _cat([s.versions_of_tokens() for s in samples], torch.int64)[0],
            "has_token_versions": torch.tensor([s.token_versions is not None for s in samples], dtype=torch.bool)}
           if any(s.token_versions is not None for s in samples) else {}),
        # loss masks only when some sample has one (multi-turn episodes)
        **({"loss_mask": _cat([s.loss_mask or [1] * len(s.completion_ids) for s in samples], torch.int64)[0],
            "has_loss_mask": torch.tensor([s.loss_mask is not None for s in samples], dtype=torch.bool)}
           if any(s.loss_mask is not None for s in samples) else {}),
    }


def samples_from_state(d: dict) -> list[Sample]:
    def split(flat: torch.Tensor, lengths: torch.Tensor) -> list[list]:
        return [t.tolist() for t in torch.split(flat, lengths.tolist())] if len(lengths) else []

    prompts = split(d["prompt_ids"], d["prompt_len"])
    comps = split(d["completion_ids"], d["completion_len"])
    beh = split(d["behaviour_logprobs"], d["behaviour_len"])
    ref = split(d["ref_logprobs"], d["ref_len"])
    has_ref, reward = d["has_ref"].tolist(), d["reward"].tolist()
    version, finished = d["version"].tolist(), d["finished"].tolist()
    if "token_versions" in d:  # same lengths as the completions
        tver, has_tver = split(d["token_versions"], d["completion_len"]), d["has_token_versions"].tolist()
    else:
        tver, has_tver = None, [False] * len(d["prompt_id"])
    if "loss_mask" in d:
        masks, has_mask = split(d["loss_mask"], d["completion_len"]), d["has_loss_mask"].tolist()
    else:
        masks, has_mask = None, [False] * len(d["prompt_id"])
    return [Sample(d["prompt_id"][i], prompts[i], comps[i], beh[i], reward[i], version[i], finished[i], d["text"][i],
                   ref[i] if has_ref[i] else None, tver[i] if has_tver[i] else None,
                   masks[i] if has_mask[i] else None)
            for i in range(len(d["prompt_id"]))]
