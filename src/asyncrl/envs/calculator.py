"""Built-in environment ``calculator``: arithmetic word-free problems solved with a calculator tool.

A prompt asks e.g. ``What is 347 * 29 - 58?`` (2 or 3 operations, ``+ - *`` with the usual
precedence, on integers of 2 or 3 digits: beyond what a small model computes in its head) as chat
messages: a system message listing the ``calculator`` tool (:meth:`ToolEnvironment.system_prompt`)
and the question, asking for a tool call and then the final answer inside ``<answer></answer>``
tags. ``Prompt.meta["answer"]`` is the exact integer result.

An episode: the policy calls ``calculator`` (Hermes ``<tool_call>`` format) and reads the result,
as many turns as it likes up to ``max_turns`` (default 4); its first turn without a tool call ends
the episode with reward 1.0 when the number in its last ``<answer></answer>`` (spaces and
thousands commas ignored) equals the answer, else 0.0. Using the tool is not rewarded by itself:
a correct answer without a call earns 1.0 too.

The tool (:func:`calculator`) evaluates ``+ - * / **``, parentheses and numbers by walking the
expression's ``ast``: nothing is ``eval``-ed, names, calls, attributes and every other syntax are
refused, and sizes are bounded (expression length, exponents, results), so a call is fast whatever
the policy writes.
"""

from __future__ import annotations

import ast
import math
import operator
import random
import re
from collections.abc import Iterator

from asyncrl.envs.tools import ToolEnvironment
from asyncrl.types import Prompt

MAX_CHARS = 200  # longest expression the calculator takes
MAX_DIGITS = 100  # largest magnitude of any number it computes: 10**MAX_DIGITS
EVAL_SEED = "calculator-eval"  # the eval set's seed (strings: disjoint from the integer train seeds' streams)
EVAL_SIZE = 200
INSTRUCTION = "Use the calculator tool, then give the final answer inside <answer></answer> tags."
# a worked example (``example=True``): small models copy a tool call's format from one
EXAMPLE = ('For example, for "What is 12 * 34?" write\n<tool_call>\n{"name": "calculator", "arguments": '
           '{"expression": "12 * 34"}}\n</tool_call>\nand, once the result 408 comes back, write <answer>408</answer>.')
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.FloorDiv: "//",
            ast.Mod: "%", ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<",
            ast.RShift: ">>", ast.MatMult: "@", ast.Invert: "~", ast.Not: "not"}
_ALLOWED = "numbers, + - * / ** and parentheses"


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot compute (the message says why, one line)."""


def _checked(value: int | float) -> int | float:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("result too large")
    elif abs(value) >= 10**MAX_DIGITS:
        raise CalculatorError(f"result too large (more than {MAX_DIGITS} digits)")
    return value


def _divide(a: int | float, b: int | float) -> int | float:
    if b == 0:
        raise CalculatorError("division by zero")
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b  # exact for integers of any size
    return a / b


def _power(base: int | float, exp: int | float) -> int | float:
    if base == 0 and exp < 0:
        raise CalculatorError("division by zero (0 to a negative power)")
    if base < 0 and not float(exp).is_integer():
        raise CalculatorError("a negative number to a fractional power is not a real number")
    if abs(exp) > 10 * MAX_DIGITS:
        raise CalculatorError(f"exponent too large (at most {10 * MAX_DIGITS})")
    if abs(base) not in (0, 1) and exp > 0 and exp * math.log10(abs(base)) >= MAX_DIGITS:
        raise CalculatorError(f"result too large (more than {MAX_DIGITS} digits)")
    return base**exp


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, got {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.BinOp):
        kind = type(node.op)
        if kind not in _BINARY and kind not in (ast.Div, ast.Pow):
            raise CalculatorError(f"operator {_SYMBOLS.get(kind, kind.__name__)} is not supported; use {_ALLOWED}")
        a, b = _eval(node.left), _eval(node.right)
        if kind is ast.Div:
            return _checked(_divide(a, b))
        if kind is ast.Pow:
            return _checked(_power(a, b))
        return _checked(_BINARY[kind](a, b))
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return -_eval(node.operand)
        if isinstance(node.op, ast.UAdd):
            return _eval(node.operand)
        raise CalculatorError(f"operator {_SYMBOLS.get(type(node.op), '?')} is not supported; use {_ALLOWED}")
    if isinstance(node, ast.Name):
        raise CalculatorError(f"names like {node.id!r} are not allowed; use {_ALLOWED}")
    if isinstance(node, ast.Call):
        raise CalculatorError(f"function calls are not allowed; use {_ALLOWED}")
    if isinstance(node, ast.Attribute):
        raise CalculatorError(f"attribute access is not allowed; use {_ALLOWED}")
    if isinstance(node, ast.Tuple):
        raise CalculatorError(f"commas are not allowed (write 1234, not 1,234); use {_ALLOWED}")
    raise CalculatorError(f"{type(node).__name__} expressions are not allowed; use {_ALLOWED}")


def evaluate_expression(expression: str) -> int | float:
    """The value of an arithmetic ``expression`` (numbers, ``+ - * / **`` and parentheses, with
    Python's precedence; ``×``, ``÷`` and ``−`` read as ``*``, ``/`` and ``-``): an ``int`` when
    exact (``/`` of integers that divide evenly included), else a ``float``. Raises
    :class:`CalculatorError` for anything else, for division by zero and for numbers beyond
    ``10**MAX_DIGITS``. Never evaluates code: the expression's ``ast`` is walked node by node."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, got {type(expression).__name__}")
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"expression too long ({len(text)} characters, at most {MAX_CHARS})")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:  # ValueError: a null byte
        raise CalculatorError(f"not an arithmetic expression ({getattr(e, 'msg', None) or e}): {text!r}") from None
    try:
        return _eval(tree.body)
    except (OverflowError, MemoryError, RecursionError):
        raise CalculatorError("result too large") from None


def format_number(value: int | float) -> str:
    """``value`` as the calculator shows it: integers exactly, an integral float without ``.0``,
    other floats to 12 significant digits."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.12g}"
    return str(value)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with +, -, *, / (true division), ** and parentheses.

    Args:
        expression: The arithmetic expression to evaluate, for example "347 * 29 - 58".
    """
    try:
        return format_number(evaluate_expression(expression))
    except CalculatorError as e:
        return f"error: {e}"


def make_problem(rng: random.Random, min_ops: int = 2, max_ops: int = 3) -> tuple[str, int]:
    """A random problem ``"347 * 29 - 58"`` (``min_ops`` to ``max_ops`` operations of ``+ - *`` on
    integers from 10 to 999) and its exact answer."""
    n_ops = rng.randint(min_ops, max_ops)
    parts = [str(rng.randint(10, 999))]
    for _ in range(n_ops):
        parts += [rng.choice("+-*"), str(rng.randint(10, 999))]
    text = " ".join(parts)
    answer = evaluate_expression(text)
    assert isinstance(answer, int)
    return text, answer


NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def parse_final_answer(turn: str, lenient: bool = False) -> int | float | None:
    """The number inside the last ``<answer></answer>`` of ``turn`` (spaces and commas ignored),
    or None when there is none or it is not a finite number. ``lenient``: a turn without
    ``<answer>`` tags answers with its last number (as GSM8K graders fall back to)."""
    found = ANSWER_RE.findall(turn)
    if not found and lenient:
        found = NUMBER_RE.findall(turn)
    if not found:
        return None
    text = found[-1].strip().replace(",", "")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class CalculatorEnvironment(ToolEnvironment):
    name = "calculator"

    def __init__(self, timeout_s: float = 5.0, max_turns: int = 4, eval_size: int = EVAL_SIZE, *,
                 max_calls_per_turn: int = 8, max_response_chars: int = 2000, wrap_responses: bool = True,
                 min_ops: int = 2, max_ops: int = 3, example: bool = False, lenient: bool = False):
        """``min_ops`` / ``max_ops``: operations per problem; ``example``: show a worked tool call in
        the question (a small model copies the format from it); ``lenient``: a final turn without
        ``<answer>`` tags answers with its last number."""
        if eval_size < 1:
            raise ValueError(f"calculator: eval_size must be at least 1, got {eval_size}")
        if not 1 <= min_ops <= max_ops:
            raise ValueError(f"calculator: need 1 <= min_ops <= max_ops, got min_ops={min_ops}, max_ops={max_ops}")
        self.min_ops, self.max_ops, self.example, self.lenient = min_ops, max_ops, example, lenient
        super().__init__([calculator], timeout_s=timeout_s, max_turns=max_turns,
                         max_calls_per_turn=max_calls_per_turn, max_response_chars=max_response_chars,
                         wrap_responses=wrap_responses)
        self.eval_size = eval_size

    def _prompt(self, prompt_id: str, problem: str, answer: int) -> Prompt:
        messages = [{"role": "system", "content": self.system_prompt("You are a helpful assistant.")},
                    {"role": "user", "content": f"What is {problem}? {INSTRUCTION}" + (f" {EXAMPLE}" if self.example else "")}]
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return Prompt(prompt_id, text, {"answer": answer, "problem": problem}, messages=messages)

    def train_prompts(self, seed: int) -> Iterator[Prompt]:
        rng = random.Random(f"calculator-train-{seed}")
        i = 0
        while True:
            problem, answer = make_problem(rng, self.min_ops, self.max_ops)
            yield self._prompt(f"calculator:{seed}:{i}", problem, answer)
            i += 1

    def eval_prompts(self) -> list[Prompt]:
        rng = random.Random(EVAL_SEED)
        return [self._prompt(f"calculator:eval:{i}", *make_problem(rng, self.min_ops, self.max_ops))
                for i in range(self.eval_size)]

    def final_reward(self, state: dict, turn: str) -> float:
        value = parse_final_answer(turn, self.lenient)
        return 1.0 if value is not None and value == state["prompt"].meta["answer"] else 0.0
