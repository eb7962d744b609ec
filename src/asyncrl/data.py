"""Row files for ``asyncrl sft`` / ``asyncrl rm``: read, check fields, split, iterate in batches.

``.jsonl`` / ``.json`` (optionally gzipped) are read with the standard library, always: row
numbers in error messages are then exact and nothing is cached under ``~/.cache``. ``.parquet``
files and ``datasets`` ``save_to_disk`` folders need the ``datasets`` package and say so if it is
missing. Every problem is a ``DataError`` (a ``ValueError``) with one line for the user.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
from pathlib import Path
from typing import Iterator

from asyncrl.errors import one_line


class DataError(ValueError):
    """Bad or missing training data; the message is one line meant for the user."""


def _datasets(what: str):
    try:
        import datasets  # noqa: F401 - 1.1 s to import: only for .parquet, save_to_disk folders, hub names
    except ImportError:
        raise DataError(f"reading {what} needs the datasets package (pip install datasets); "
                        "or convert it to .jsonl") from None
    return datasets


HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SUFFIXES = (".jsonl", ".json", ".parquet", ".gz")


def _pick_split(ds, split: str, source) -> object:
    """A DatasetDict's ``split`` (one-line error naming the splits it has); a Dataset as is."""
    if hasattr(ds, "keys"):
        if split not in ds:
            raise DataError(f"{source} holds splits {', '.join(ds.keys())} but no {split!r}; pass the split to use "
                            "(--prompts-split / --eval-prompts-split)")
        return ds[split]
    return ds


def rows_of(obj, what: str = "dataset") -> list[dict]:
    """A ``datasets.Dataset`` (after the user's own ``map`` / ``filter``), a pandas DataFrame or a
    list of dicts -> list of row dicts (at least one)."""
    if isinstance(obj, dict):
        if obj and all(hasattr(v, "features") for v in obj.values()):  # a DatasetDict
            raise DataError(f"{what} is a DatasetDict with splits {', '.join(obj.keys())}; pass one split, "
                            f"e.g. ds['train']")
        raise DataError(f"{what} is a dict; give a datasets.Dataset, a list of dicts (one per row), or a path")
    if hasattr(obj, "to_dict") and hasattr(obj, "columns") and not hasattr(obj, "features"):  # pandas
        rows = obj.to_dict("records")
    elif isinstance(obj, (list, tuple)) or hasattr(obj, "features") or hasattr(obj, "__iter__") and not isinstance(
            obj, (str, bytes, dict)):
        rows = [r for r in obj]
    else:
        raise DataError(f"{what} is a {type(obj).__name__}; give a datasets.Dataset, a list of dicts, or a path")
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise DataError(f"{what} row {i} is a {type(r).__name__}, not a dict of column: value")
        rows[i - 1] = dict(r)
    if not rows:
        raise DataError(f"{what} holds no rows")
    return rows


def rename_columns(rows: list[dict], column_map: str | None, source) -> list[dict]:
    """``old=new[,old=new]`` applied to every row; the old column must exist in the first row."""
    if not column_map:
        return rows
    pairs = [kv.split("=", 1) for kv in column_map.split(",")]
    first = rows[0]
    for old, new in pairs:
        if old not in first:
            raise DataError(f"column_map: {source} has no column {old!r} (columns: {', '.join(list(first)[:8])})")
    mapping = dict(pairs)
    return [{mapping.get(k, k): v for k, v in r.items()} for r in rows]


def load_rows(path: str | Path, split: str = "train") -> list[dict]:
    """A data file, a ``save_to_disk`` folder (``split`` of a DatasetDict) or a Hugging Face hub
    dataset name ``owner/name`` (``split``; needs internet or the datasets cache) -> list of row
    dicts (at least one)."""
    p = Path(path)
    if not p.exists():
        if HUB_NAME.match(str(path)) and not str(path).lower().endswith(SUFFIXES):
            return _hub_rows(str(path), split)
        raise DataError(f"data file not found: {p}")
    name = p.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    opener = gzip.open if name.endswith(".gz") else open
    if p.is_dir():
        ds = _pick_split(_datasets(f"the folder {p}").load_from_disk(str(p)), split, p)
        rows = [dict(r) for r in ds]
    elif base.endswith(".parquet"):
        rows = [dict(r) for r in _datasets(str(p)).Dataset.from_parquet(str(p))]
    elif base.endswith(".jsonl"):
        rows = []
        try:
            with opener(p, "rt", encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{p} line {line_no}: not valid JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{p} line {line_no}: expected a JSON object, got {type(row).__name__}")
                    rows.append(row)
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise DataError(f"cannot read {p}: {e}") from None
    elif base.endswith(".json"):
        try:
            with opener(p, "rt", encoding="utf-8") as f:
                rows = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise DataError(f"cannot read {p}: {e}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{p}: a .json data file must hold a list of objects")
    else:
        raise DataError(f"{p}: unknown data format; use .jsonl, .json (optionally .gz), .parquet or a "
                        "datasets save_to_disk folder")
    if not rows:
        raise DataError(f"{p} holds no rows")
    return rows


def _hub_rows(name: str, split: str) -> list[dict]:
    datasets = _datasets(f"the hub dataset {name}")
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, unknown split: all one line for the user
        raise DataError(f"cannot load hub dataset {name!r} (split {split!r}): {one_line(e, limit=200, typed=True)}; offline, "
                        "point at a local file or a save_to_disk folder instead") from None
    rows = [dict(r) for r in ds]
    if not rows:
        raise DataError(f"hub dataset {name!r} split {split!r} holds no rows")
    return rows


def json_object_flag(text: str | None, name: str, holding: str) -> dict:
    """A flag whose value is a JSON object (``--env-args``, ``--rg-config``): the dict, ``{}`` for
    None; a one-line ValueError naming flag ``name`` when it is not valid JSON or not an object of
    ``holding`` (what its keys are, for the message)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} is not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object of {holding}, got {text!r}")
    return value


def field_value(row: dict, field: str, source: str | Path, i: int):
    """``row[field]``; a DataError naming row ``i`` (1-based) and the fields it has when it lacks it."""
    if field not in row:
        have = ", ".join(list(row)[:8]) or "none"
        raise DataError(f"{source} row {i}: missing field {field!r} (fields present: {have})")
    return row[field]


def column(rows: list[dict], field: str, source: str | Path, messages: bool = False) -> list:
    """The string values of ``field``; names the first row (1-based) that lacks it or holds a
    non-string. ``messages``: a value may also be chat messages (a list of ``{"role", "content"}``
    dicts, TRL's conversational format)."""
    out = []
    for i, row in enumerate(rows, 1):
        v = field_value(row, field, source, i)
        if messages and isinstance(v, list):
            if not v or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                and isinstance(m.get("content"), str) for m in v):
                raise DataError(f"{source} row {i}: field {field!r} holds a list that is not chat messages "
                                "(each a {'role': str, 'content': str} dict)")
        elif not isinstance(v, str):
            raise DataError(f"{source} row {i}: field {field!r} must be a string{' or chat messages' if messages else ''}, "
                            f"got {type(v).__name__}")
        out.append(v)
    return out


def split_rows(rows: list, holdout: int, seed: int, source: str | Path) -> tuple[list, list]:
    """(train, held-out): ``holdout`` rows picked by a seeded shuffle; the rest keep their order."""
    if holdout == 0:
        return rows, []
    if holdout >= len(rows):
        raise DataError(f"eval_holdout_rows={holdout} leaves no training rows ({source} has {len(rows)} rows)")
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:holdout])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def steps_for_epochs(epochs: float, n_rows: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n_rows / batch_size))


def batches(n_rows: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of row indices: each epoch a fresh seeded permutation; a batch may span two
    epochs, so every batch is full and epoch e ends after ceil(e * n_rows / batch_size) batches at most."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            perm = list(range(n_rows))
            rng.shuffle(perm)
            order.extend(perm)
        yield order[:batch_size]
        order = order[batch_size:]
