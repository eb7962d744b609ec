"""Built-in task ``gsm8k``: grade-school maths word problems (Cobbe et al. 2021), checked with math-verify.

Data: a folder holding the GSM8K ``train.jsonl`` and ``test.jsonl`` files (fields ``question`` and
``answer``, the answer ending in ``#### N``), or, when the value is not a local path, a Hugging
Face dataset name such as ``openai/gsm8k`` (config ``main``; needs internet). Training prompts come
from the train split (reshuffled every epoch), evaluation uses the test split in file order.

Prompt text is ``prompt_template`` with ``{question}`` replaced by the question; the tokenizer's
chat template is applied on top by ``policy.encode_prompts`` when the model has one.

Reward: 1.0 when the completion's final answer equals the number after ``####``, else 0.0. The
final answer is what follows the last ``####`` in the completion when it has one (models that
imitate the GSM8K solution format), otherwise the whole completion; ``math_verify.parse`` takes the
last ``\\boxed{}`` (or, failing that, the last number / LaTeX expression) from it and
``math_verify.verify`` compares it with the gold number, so ``1,234``, ``1234.0``, ``\\boxed{1234}``
and ``$1234$`` all match 1234, and ``1/2`` matches ``0.5``.

math-verify bounds each parse / comparison with ``signal.alarm``, which Python allows only in the
main thread. Generators run in the main thread of a spawned process (``workers: process``) and
evaluation in the main thread of the learner, so the 5 s timeouts apply there; in a worker thread
(``workers: thread``) the timeouts are switched off (math-verify would raise otherwise). Inputs are
bounded by ``max_new_tokens``, so an unbounded parse is unlikely but not impossible in thread mode.
"""

from __future__ import annotations

import json
import logging
import threading
from functools import lru_cache
from pathlib import Path
from asyncrl.tasks.base import ListPrompts
from asyncrl.types import Prompt

DEFAULT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
TIMEOUT_S = 5
HF_CONFIG = "main"

# math-verify logs a warning whenever timeouts are off and on every parse it gives up on.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def gold_answer(answer: str) -> str:
    """The final number of a GSM8K solution: ``'...\\n#### 1,234'`` -> ``'1234'``."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '#### N' final line: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _timeout() -> int | None:
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


# math_verify (0.7 s to import here) is read only when a gsm8k reward is computed: every run imports
# this module (tasks.make_task), most never grade gsm8k.
@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse  # lazy: see the note above _parse_gold

    return parse(f"${gold}$", parsing_timeout=_timeout())


def extract_prediction(completion: str):
    """math-verify's parse of the completion's final answer (a list; empty when none was found)."""
    from math_verify import parse  # lazy: see the note above _parse_gold

    text = completion.replace("\u2212", "-")  # unicode minus
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return parse(text, parsing_timeout=_timeout())


def grade(completion: str, gold: str) -> tuple[bool, str | None]:
    """(correct, the extracted answer as text or None) for one completion against a gold number."""
    from math_verify import verify  # lazy: see the note above _parse_gold

    pred = extract_prediction(completion)
    if not pred:
        return False, None
    shown = pred[-1] if isinstance(pred[-1], str) else str(pred[0])
    return bool(verify(_parse_gold(gold), pred, timeout_seconds=_timeout())), shown


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno} is not valid JSON: {e.msg}") from None
    return rows


def is_local(data: str) -> bool:
    """A local folder, unless it reads as a hub name ``owner/name`` that does not exist locally."""
    return Path(data).expanduser().exists() or data.startswith((".", "/", "~")) or data.count("/") != 1


def load_split(data: str, split: str) -> list[dict]:
    """Rows ``{"question", "answer"}`` of one split from a local folder or a HF dataset name."""
    p = Path(data).expanduser()
    if is_local(data):
        f = p / f"{split}.jsonl"
        if not p.is_dir():
            raise ValueError(f"gsm8k data folder not found: {data} (expected {split}.jsonl inside; set --gsm8k-data)")
        if not f.is_file():
            raise ValueError(f"gsm8k data folder {data} has no {split}.jsonl")
        rows = _read_jsonl(f)
    else:
        try:
            import datasets  # 1.1 s to import: only for a hub name, never for local folders

            rows = list(datasets.load_dataset(data, HF_CONFIG, split=split))
        except Exception as e:  # noqa: BLE001 - offline, unknown name, ...
            raise ValueError(f"could not load gsm8k dataset {data!r} split {split!r} from the Hugging Face hub "
                             f"({type(e).__name__}); pass a local folder with --gsm8k-data") from None
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "question" not in r or "answer" not in r:
            raise ValueError(f"gsm8k {split} row {i} lacks the 'question' and 'answer' fields")
    if not rows:
        raise ValueError(f"gsm8k {split} split of {data} is empty")
    return rows


class GSM8KTask(ListPrompts):
    name = "gsm8k"

    def __init__(self, data: str, template: str | None = None):
        self.data = data
        self.template = template or DEFAULT_TEMPLATE
        if "{question}" not in self.template:
            raise ValueError("gsm8k prompt_template must contain {question}")
        if is_local(data) and not Path(data).expanduser().is_dir():
            # Fail at start-up, not in a generator process minutes later.
            raise ValueError(f"gsm8k data folder not found: {data} (expected train.jsonl and test.jsonl; "
                             "set --gsm8k-data)")
        self._splits: dict[str, list[Prompt]] = {}

    def _prompts(self, split: str) -> list[Prompt]:
        if split not in self._splits:
            self._splits[split] = [
                Prompt(prompt_id=f"gsm8k-{split}-{i}", text=self.template.replace("{question}", r["question"]),
                       meta={"answer": gold_answer(r["answer"]), "question": r["question"]})
                for i, r in enumerate(load_split(self.data, split))
            ]
        return self._splits[split]

    # The splits are read on first use (a hub dataset downloads then), not at construction.
    def train_pool(self) -> list[Prompt]:
        """Every training prompt (the start-up length check reads them)."""
        return self._prompts("train")

    def eval_prompts(self) -> list[Prompt]:
        return self._prompts("test")

    def reward(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"reward: {len(prompts)} prompts but {len(completions)} completions")
        return [1.0 if grade(c, p.meta["answer"])[0] else 0.0 for p, c in zip(prompts, completions)]

    def evaluate(self, prompts: list[Prompt], completions: list[str]) -> tuple[dict[str, float], list[dict]]:
        rows = []
        for p, c in zip(prompts, completions, strict=True):
            correct, predicted = grade(c, p.meta["answer"])
            rows.append({"prompt_id": p.prompt_id, "prompt": p.text, "completion": c, "answer": p.meta["answer"],
                         "predicted": predicted, "correct": correct, "reward": 1.0 if correct else 0.0})
        return {"accuracy": sum(r["correct"] for r in rows) / max(1, len(rows))}, rows
