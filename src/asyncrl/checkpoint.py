"""Checkpoints: ``save_pretrained`` folders (plain transformers can load them) plus resume state.

Layout: ``<run>/checkpoints/step_<N>/`` holds the model and tokenizer files, ``trainer_state.pt``
(optimizer, scheduler, learner version, value head, counters, RNG) and ``config.yaml``;
``<run>/checkpoints/latest`` names the newest. Every folder is written to a temporary name and
renamed, so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asyncrl.io import atomic_dir, atomic_write_text

TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, config_yaml: str) -> Path:
    final = Path(run_dir) / "checkpoints" / f"step_{step}"

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save({**trainer_state, "torch_rng": torch.get_rng_state()}, tmp / TRAINER_STATE)
        (tmp / "config.yaml").write_text(config_yaml)

    atomic_dir(final, fill)
    atomic_write_text(Path(run_dir) / "checkpoints" / "latest", final.name + "\n")
    return final


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint) -> the checkpoint folder."""
    p = Path(path)
    if (p / TRAINER_STATE).is_file():
        return p
    latest = p / "checkpoints" / "latest"
    if latest.is_file():
        ckpt = p / "checkpoints" / latest.read_text().strip()
        if (ckpt / TRAINER_STATE).is_file():
            return ckpt
    raise ValueError(f"no checkpoint to resume from at {p} (expected {TRAINER_STATE} or checkpoints/latest)")


def load_trainer_state(ckpt: Path) -> dict:
    """The optimizer, scheduler, value head, counters and RNG state saved beside the weights.

    Read with ``weights_only=True``: torch's restricted unpickler accepts tensors, numbers,
    strings and containers only, so a tampered file cannot run code when a run folder someone
    sent you is resumed. A file it refuses, or a truncated one, is a one-line ValueError."""
    path = Path(ckpt) / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError (refused object), EOFError/RuntimeError (truncated), ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot read {path}: not a trainer state asyncrl wrote, or damaged ({first})") from None
    if not isinstance(state, dict) or "learner" not in state:
        raise ValueError(f"cannot read {path}: not a trainer state asyncrl wrote (no 'learner' entry)")
    return state
