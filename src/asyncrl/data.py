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
from pathlib import Path
from typing import Iterator


class DataError(ValueError):
    """Bad or missing training data; the message is one line meant for the user."""


def _datasets(what: str):
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DataError(f"reading {what} needs the datasets package (pip install datasets); "
                        "or convert it to .jsonl") from None
    return datasets


def load_rows(path: str | Path) -> list[dict]:
    """A data file or ``save_to_disk`` folder -> list of row dicts (at least one)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    name = p.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    opener = gzip.open if name.endswith(".gz") else open
    if p.is_dir():
        ds = _datasets(f"the folder {p}").load_from_disk(str(p))
        if hasattr(ds, "keys"):  # a DatasetDict: take its train split
            if "train" not in ds:
                raise DataError(f"{p} holds splits {', '.join(ds.keys())} but no 'train'; point at one split's folder")
            ds = ds["train"]
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


def column(rows: list[dict], field: str, source: str | Path) -> list[str]:
    """The string values of ``field``; names the first row (1-based) that lacks it or holds a non-string."""
    out = []
    for i, row in enumerate(rows, 1):
        if field not in row:
            have = ", ".join(list(row)[:8]) or "none"
            raise DataError(f"{source} row {i}: missing field {field!r} (fields present: {have})")
        v = row[field]
        if not isinstance(v, str):
            raise DataError(f"{source} row {i}: field {field!r} must be a string, got {type(v).__name__}")
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
