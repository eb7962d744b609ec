"""Checkpoints: ``save_pretrained`` folders (plain transformers can load them) plus resume state.

Layout: ``<run>/checkpoints/step_<N>/`` holds

- the model and tokenizer files (``model.safetensors``, ...), loadable by ``from_pretrained``;
  with LoRA the adapter instead (``adapter_config.json`` + ``adapter_model.safetensors``, loadable by
  ``PeftModel.from_pretrained(base, folder)``), and with ``lora_save_merged`` a merged model in ``merged/``;
- ``trainer_state.json`` + ``trainer_state.tensors`` (safetensors format): everything else a resume needs
  (optimizer, LR scheduler, learner version, value head, counters, every random state, the
  replay buffer's contents, each generator's prompt-stream position), as a JSON tree whose
  tensors live in the safetensors file (see :func:`encode_state`);
- ``config.yaml``, the run's resolved config.

``<run>/checkpoints/latest`` names the newest. Every folder is written to a temporary name and
renamed, so an interrupted save never leaves a half-written checkpoint behind; the newest
``keep`` folders are kept.

Nothing here is unpickled: JSON and safetensors cannot carry code, so resuming a run folder
someone sent you cannot execute anything. A damaged or tampered state is a one-line ValueError.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from asyncrl.config import Config, ConfigError, file_keys, leaf_values, overlay, place, validated
from asyncrl.errors import one_line
from asyncrl.io import atomic_dir, atomic_write_text
from asyncrl.lora import is_peft, merged_copy

STATE_JSON = "trainer_state.json"
# safetensors format, but not named *.safetensors: vLLM (like other loaders) reads every
# *.safetensors file of a model folder as weights, and a checkpoint folder is a model folder.
STATE_TENSORS = "trainer_state.tensors"
TRAINER_STATE = STATE_JSON  # the file that marks a folder as an asyncrl checkpoint
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --- a JSON tree with tensors beside it --------------------------------------------------------

def encode_state(tree) -> tuple[object, dict[str, torch.Tensor]]:
    """Nested dicts / lists / tuples of tensors, numbers, strings, bools and None -> (a JSON-able
    tree, {name: tensor}). Tensors become ``{"__tensor__": name}``; tuples ``{"__tuple__": [...]}``;
    dicts with non-string keys (an optimizer's parameter indices) ``{"__items__": [[k, v], ...]}``.
    Anything else raises TypeError: the state must round-trip exactly, or not be saved."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x):
        if isinstance(x, torch.Tensor):
            name = f"t{len(tensors)}"
            # safetensors wants contiguous CPU tensors that share no storage.
            tensors[name] = x.detach().to("cpu").contiguous().clone()
            return {"__tensor__": name}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v) for k, v in x.items()}
            return {"__items__": [[enc(k), enc(v)] for k, v in x.items()]}
        raise TypeError(f"cannot save a {type(x).__name__} in a trainer state")

    return enc(tree), tensors


def decode_state(tree, tensors: dict[str, torch.Tensor]):
    """The inverse of :func:`encode_state`."""

    def dec(x):
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__tuple__" in x:
                return tuple(dec(v) for v in x["__tuple__"])
            if "__items__" in x:
                return {_key(dec(k)): dec(v) for k, v in x["__items__"]}
            return {k: dec(v) for k, v in x.items()}
        return x

    return dec(tree)


def _key(k):
    return tuple(k) if isinstance(k, list) else k  # JSON has no tuples: keys that were tuples


def save_state(folder: Path, state: dict) -> None:
    tree, tensors = encode_state(state)
    save_file(tensors, str(Path(folder) / STATE_TENSORS))
    (Path(folder) / STATE_JSON).write_text(json.dumps(tree, allow_nan=True))


def load_trainer_state(ckpt: Path) -> dict:
    """The resume state saved beside the weights (see the module docstring). A missing, truncated
    or tampered file is a one-line ValueError."""
    folder = Path(ckpt)
    try:
        tree = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
        state = decode_state(tree, tensors)
    except Exception as e:  # missing file, bad JSON, truncated safetensors, a name not in the file, ...
        raise ValueError(f"cannot read the trainer state in {folder}: not a checkpoint asyncrl wrote, "
                         f"or damaged ({one_line(e, 'first', limit=200, typed=True)})") from None
    if not isinstance(state, dict) or "learner" not in state:
        raise ValueError(f"cannot read the trainer state in {folder}: not a checkpoint asyncrl wrote "
                         "(no 'learner' entry)")
    return state


# --- checkpoint folders ------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, config_yaml: str,
                    keep: int = 0, protect: Path | None = None, save_merged: bool = False,
                    model_state: dict | None = None) -> Path:
    """Write ``checkpoints/step_<step>`` atomically, point ``latest`` at it, and delete all but the
    newest ``keep`` step folders (0 = keep all), never ``protect``: the folder the run's
    generators load their model and tokenizer from (for a resumed run, its start checkpoint),
    which replacement generators still need.

    A peft ``model`` (LoRA) writes its adapter in peft's format (``adapter_config.json`` +
    ``adapter_model.safetensors``) instead of the full weights; ``save_merged`` adds the merged
    plain model and the tokenizer in ``merged/``. ``model_state``: the weights to write instead of
    ``model``'s own (a sharded learner's, gathered: the folder is the same as one rank's)."""
    ckpts = Path(run_dir) / "checkpoints"
    final = ckpts / f"step_{step}"

    def fill(tmp: Path) -> None:
        if is_peft(model):
            model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False,
                                  **({"state_dict": model_state} if model_state is not None else {}))
            if save_merged:
                merged_copy(model).save_pretrained(tmp / "merged", safe_serialization=True)
                tokenizer.save_pretrained(tmp / "merged")
        else:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=model_state)
        tokenizer.save_pretrained(tmp)
        save_state(tmp, trainer_state)
        (tmp / "config.yaml").write_text(config_yaml)

    atomic_dir(final, fill)
    atomic_write_text(ckpts / "latest", final.name + "\n")
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            if old != final and (protect is None or old.resolve() != Path(protect).resolve()):
                shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete ``step_N`` folders, oldest first."""
    ckpts = Path(run_dir) / "checkpoints"
    if not ckpts.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpts.iterdir() if (m := _STEP_DIR.match(p.name)) and
             (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint) -> the checkpoint folder."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"nothing to resume at {p}: no such folder")
    if (p / TRAINER_STATE).is_file():
        return p
    if (p / "trainer_state.pt").is_file():
        raise ValueError(f"{p} is a checkpoint of an older asyncrl (trainer_state.pt, a pickle); it cannot be "
                         "resumed safely. Start a new run from its weights with --model instead")
    latest = p / "checkpoints" / "latest"
    if latest.is_file():
        ckpt = p / "checkpoints" / latest.read_text().strip()
        if (ckpt / TRAINER_STATE).is_file():
            return ckpt
    found = list_checkpoints(p)
    if found:  # `latest` lost or pointing at a deleted folder: the newest complete one
        return found[-1]
    raise ValueError(f"no checkpoint to resume from at {p} (expected {TRAINER_STATE} or checkpoints/step_N)")


# --- random states -----------------------------------------------------------------------------

def rng_state() -> dict:
    """This process's global random states: torch (CPU, CUDA), Python ``random``, numpy."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": [version, list(internal), py_gauss],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


# --- the config of a resumed run -------------------------------------------------------------------

def resume_may_change() -> frozenset[str]:
    """Flat names of the fields a resumed run may change (marked ``RESUMABLE`` in config.py, on the
    field or its section): where and how fast the roles run, how often it evaluates and saves, and
    how long it goes on. Every other field changes what is learned (loss, data, model, optimizer,
    sampling, the staleness bound, the buffer), so changing it on resume is refused unless
    ``resume_force``. ``steps`` may grow: the LR schedule is then recomputed for the new length."""
    from asyncrl.config import Config, flat_fields

    return frozenset(f.flat for f in flat_fields(Config).values() if f.resumable)


def resume_config(given: dict, from_file=()):
    """The config of ``--resume``: the checkpoint's own ``config.yaml`` (nested, or flat as written
    before the nesting), with the fields given here (config file and flags, ``given``, flat or
    nested, which holds ``resume``) on top. The run folder defaults to the one that holds the
    checkpoint. A change to a field outside :func:`resume_may_change` is a one-line ConfigError
    naming each field, unless ``resume_force``. ``from_file``: the keys of ``given`` from a YAML file."""
    if given.get("overwrite") is True:
        raise ConfigError("--resume continues the run in its folder and --overwrite replaces it: pass one of them")
    ckpt = find_checkpoint(str(given["resume"]))
    try:
        saved = yaml.safe_load((ckpt / "config.yaml").read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a mapping")
        saved = {k: v for k, v in saved.items() if k not in ("output_dir", "resume", "resume_force", "overwrite")}
        # (an old flat config.yaml holds every field, sft/rm ones and other tasks' too: as a file's keys
        # they are dropped where this run does not read them)
        original = Config.model_validate(saved, context={"from_file": file_keys(saved)})
    except (OSError, ValueError, yaml.YAMLError) as e:  # ValidationError is a ValueError
        raise ConfigError(f"cannot read the config of checkpoint {ckpt}: {one_line(e, 'first', limit=200)}") from None
    top = place(Config, given)
    # a loss (task, buffer, runtime) of another kind given here starts from that kind's defaults
    data = overlay(Config, original.model_dump(exclude={"output_dir", "resume", "resume_force", "overwrite"}), top)
    # config.yaml holds `workers` / `weight_transport` as resolved from `auto` for the original
    # host; when what was given here (another runtime, more generators) rules them out, and they
    # were not given here too, they are resolved again.
    given_async = top.get("asynchrony") if isinstance(top.get("asynchrony"), dict) else {}
    context = {"from_file": set(from_file)}
    for reset in ((), ("weight_transport",), ("weight_transport", "workers")):
        auto = {k: "auto" for k in reset if k not in given_async}
        try:
            merged = Config.model_validate({**data, "asynchrony": {**data.get("asynchrony", {}), **auto}},
                                           context=context)
            break
        except (ValidationError, ConfigError):  # (Config.__init__ turns the first into the second)
            pass
    else:
        merged = validated(data, "train", from_file)  # raises the one-line error of the config as given
    may_change = resume_may_change()
    missing = object()
    before, after = leaf_values(original), leaf_values(merged)
    changed = [k for k in {**before, **after} if k not in may_change
               and before.get(k, missing) != after.get(k, missing)]
    if changed and not merged.resume_force:
        def shown(d, k):
            return repr(d[k]) if k in d else "(unset)"

        diff = ", ".join(f"{k} ({shown(before, k)} -> {shown(after, k)})" for k in changed)
        raise ConfigError(f"resuming {ckpt} with a different algorithm: {diff}; drop these flags to continue the run "
                          "as it was, or pass --resume-force to change them anyway")
    if merged.output_dir is None:
        merged.output_dir = str(ckpt.parent.parent)
    return merged
