"""Tool-using episodes: the policy calls Python functions, the environment answers with their results.

The format is Hermes / Qwen2.5's (the one their chat templates teach): the system prompt
(:meth:`ToolEnvironment.system_prompt`) lists the tools' JSON schemas inside ``<tools></tools>``;
a turn calls tools with one or more blocks

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "2+3*4"}}
    </tool_call>

and the environment answers with one observation (role ``tool``) holding a
``<tool_response>\\n...\\n</tool_response>`` block per call, in the order of the calls. A turn
without a tool call is the episode's final answer: :meth:`ToolEnvironment.final_reward` scores it
and the episode ends.

Nothing the policy writes crashes the episode: a malformed call (bad JSON, no name, arguments that
are not an object), an unknown tool, arguments the tool does not take, a tool that raises, and a
tool that takes longer than ``timeout_s`` are all answered with a one-line ``error: ...`` response,
which the policy reads and may correct in its next turn.

Chat templates differ in what they do with a ``tool`` message: SmolLM2's (plain ChatML) shows its
content as it is, so the ``<tool_response>`` tags written here are what the model sees; Qwen2.5's
wraps a tool message's content in ``<tool_response>`` tags itself, so for such a template pass
``wrap_responses=False`` (the observation is then one ``tool`` message per call, unwrapped).
"""

from __future__ import annotations

import inspect
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncrl.envs.base import Environment, Step
from asyncrl.errors import one_line
from asyncrl.types import Prompt

CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
OPEN, CLOSE = "<tool_call>", "</tool_call>"
ERROR_LIMIT = 300  # characters of an error message shown to the policy

# JSON schema type -> the Python types a JSON value of it decodes to
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),),
}


@dataclass(frozen=True)
class ToolCall:
    """One parsed ``<tool_call>``: the tool's name and its keyword arguments."""

    name: str
    arguments: dict


@dataclass(frozen=True)
class ToolCallError:
    """A turn whose tool calls could not be parsed; ``message`` (one line) is shown to the policy."""

    message: str


def parse_tool_calls(text: str) -> list[ToolCall] | ToolCallError:
    """The tool calls in ``text`` (a policy turn), in order; ``[]`` when it has none.

    Each call is a ``<tool_call>`` ... ``</tool_call>`` block holding a JSON object
    ``{"name": str, "arguments": {...}}`` (``arguments`` may be left out for a tool without
    parameters). Anything wrong with any block (invalid JSON, not an object, no name, arguments that
    are not an object, a ``<tool_call>`` never closed or a ``</tool_call>`` never opened) makes the
    whole turn a :class:`ToolCallError` naming the block; the policy gets to try again."""
    blocks = CALL_RE.findall(text)
    rest = CALL_RE.sub("", text)
    if OPEN in rest:
        return ToolCallError(f"a {OPEN} without a closing {CLOSE}")
    if CLOSE in rest:
        return ToolCallError(f"a {CLOSE} without an opening {OPEN}")
    calls = []
    for i, block in enumerate(blocks, 1):
        where = f"tool call {i}" if len(blocks) > 1 else "tool call"
        try:
            value = json.loads(block)
        except json.JSONDecodeError as e:
            return ToolCallError(f"{where} is not valid JSON ({e.msg} at character {e.pos}): "
                                 f"{_clip(block.strip(), 80)}")
        if not isinstance(value, dict):
            return ToolCallError(f'{where} must be a JSON object {{"name": ..., "arguments": {{...}}}}, got '
                                 f"{type(value).__name__}")
        name = value.get("name")
        if not isinstance(name, str) or not name:
            return ToolCallError(f'{where} has no "name" (a string naming the tool)')
        arguments = value.get("arguments", {})
        if not isinstance(arguments, dict):
            return ToolCallError(f'{where} ({name}): "arguments" must be a JSON object of the tool\'s parameters, '
                                 f"got {type(arguments).__name__}")
        calls.append(ToolCall(name, arguments))
    return calls


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(message: str) -> str:
    return "error: " + _clip(one_line(message), ERROR_LIMIT)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def run_with_timeout(fn: Callable, kwargs: dict, timeout_s: float) -> tuple[bool, Any]:
    """``fn(**kwargs)`` in a daemon thread, waited for at most ``timeout_s`` seconds:
    ``(True, result)``, ``(False, exception)`` when it raised, or ``(False, None)`` on timeout.

    A Python thread cannot be killed: a call that times out is abandoned and keeps running (and
    holding whatever it holds) until it returns by itself. Its thread is a daemon, so it never keeps
    the interpreter from exiting, but a tool that can hang forever leaks one thread per hung call;
    tools should bound their own work (the built-in calculator does)."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["result"] = fn(**kwargs)
        except BaseException as e:  # noqa: BLE001 - the tool's failure is reported to the policy
            box["error"] = e

    thread = threading.Thread(target=target, name=f"tool-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return False, None
    if "error" in box:
        return False, box["error"]
    return True, box.get("result")


class ToolEnvironment(Environment):
    """Base class of tool-using environments (see the module docstring).

    ``tools``: plain Python functions with type hints and a Google-style docstring (a summary line
    and an ``Args:`` section describing every parameter), from which
    :func:`transformers.utils.get_json_schema` builds the schemas the policy is shown; the name the
    policy calls a tool by is the function's ``__name__``. ``timeout_s``: the longest one call may
    take (a longer one is abandoned, see :func:`run_with_timeout`, and answered with a timeout
    error). ``max_calls_per_turn``: calls beyond it in one turn are not run (each is answered with
    an error). ``max_response_chars``: a longer tool result is cut. ``wrap_responses``: see the
    module docstring.

    Subclasses give ``train_prompts`` / ``eval_prompts`` (messages starting with
    :meth:`system_prompt`) and :meth:`final_reward`; :meth:`reset`'s state is a dict with the
    ``prompt``, the number of ``tool_calls`` run and of tool ``errors``, and may be extended."""

    name = "tools"
    observation_role = "tool"

    def __init__(self, tools: list[Callable], timeout_s: float = 5.0, max_turns: int = 4, *,
                 max_calls_per_turn: int = 8, max_response_chars: int = 2000, wrap_responses: bool = True):
        from transformers.utils import get_json_schema  # transformers' own tool-schema builder

        if not tools:
            raise ValueError(f"{self.name}: a tool environment needs at least one tool")
        if not timeout_s > 0:
            raise ValueError(f"{self.name}: timeout_s must be positive, got {timeout_s}")
        if max_turns < 1:
            raise ValueError(f"{self.name}: max_turns must be at least 1, got {max_turns}")
        if max_calls_per_turn < 1:
            raise ValueError(f"{self.name}: max_calls_per_turn must be at least 1, got {max_calls_per_turn}")
        self.tools: dict[str, Callable] = {}
        self._schemas: list[dict] = []
        for fn in tools:
            if not callable(fn):
                # ValueError like every other refusal here (make_env reads a TypeError as wrong env_args)
                raise ValueError(f"{self.name}: tool {fn!r} is not callable")  # noqa: TRY004
            name = getattr(fn, "__name__", None)
            if not name or name == "<lambda>":
                raise ValueError(f"{self.name}: a tool must be a named function (def), got {fn!r}")
            if name in self.tools:
                raise ValueError(f"{self.name}: two tools named {name!r}")
            try:
                schema = get_json_schema(fn)
            except Exception as e:  # noqa: BLE001 - DocstringParsingException / TypeHintParsingException
                raise ValueError(f"{self.name}: tool {name!r} needs type hints and a Google-style docstring "
                                 f"(Args: describing every parameter): {one_line(e, 'first')}") from None
            self.tools[name] = fn
            self._schemas.append(schema)
        self.timeout_s = float(timeout_s)
        self.max_turns = max_turns
        self.max_calls_per_turn = max_calls_per_turn
        self.max_response_chars = max_response_chars
        self.wrap_responses = wrap_responses

    # -- what the policy is shown ----------------------------------------------------------------

    def tool_schemas(self) -> list[dict]:
        """The tools' JSON schemas (``{"type": "function", "function": {...}}``), in order."""
        return json.loads(json.dumps(self._schemas))  # a copy the caller may change

    def system_prompt(self, instructions: str = "") -> str:
        """The system message that lists the tools and explains how to call them (Hermes style),
        after ``instructions`` when given."""
        tools = "\n".join(json.dumps(s) for s in self._schemas)
        text = ("# Tools\n\n"
                "You can call functions (tools) to help you answer. Their signatures are listed inside "
                "<tools></tools> XML tags:\n"
                f"<tools>\n{tools}\n</tools>\n\n"
                "To call a function, write a JSON object with its name and arguments inside "
                "<tool_call></tool_call> XML tags:\n"
                '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n'
                "You may make several calls in one turn. Each result comes back inside "
                "<tool_response></tool_response> XML tags.")
        return f"{instructions.rstrip()}\n\n{text}" if instructions else text

    # -- episodes --------------------------------------------------------------------------------

    def reset(self, prompt: Prompt) -> dict:
        return {"prompt": prompt, "tool_calls": 0, "errors": 0}

    def final_reward(self, state: dict, turn: str) -> float:
        """The reward of ``turn``, a turn without tool calls, which ends the episode."""
        raise NotImplementedError

    def step(self, state: dict, turn: str) -> Step:
        calls = parse_tool_calls(turn)
        if isinstance(calls, ToolCallError):
            state["errors"] = state.get("errors", 0) + 1
            return Step(self._observation([_error(f"malformed tool call: {calls.message}")]), 0.0, False)
        if not calls:
            return Step(None, float(self.final_reward(state, turn)), True)
        responses = []
        for i, call in enumerate(calls):
            if i >= self.max_calls_per_turn:
                text = _error(f"{call.name} not run: at most {self.max_calls_per_turn} tool calls per turn")
            else:
                text = self.call_tool(call)
            state["tool_calls"] = state.get("tool_calls", 0) + 1
            state["errors"] = state.get("errors", 0) + text.startswith("error: ")
            responses.append(text)
        return Step(self._observation(responses), 0.0, False)

    def call_tool(self, call: ToolCall) -> str:
        """The response to one call: the tool's result as text (cut to ``max_response_chars``), or a
        one-line ``error: ...`` (unknown tool, bad arguments, the tool raised, timed out)."""
        fn = self.tools.get(call.name)
        if fn is None:
            return _error(f"unknown tool {call.name!r}; the tools are {', '.join(self.tools)}")
        problem = self._check_arguments(call)
        if problem:
            return _error(f"{call.name}: {problem}")
        ok, value = run_with_timeout(fn, call.arguments, self.timeout_s)
        if ok:
            return _clip(_as_text(value), self.max_response_chars)
        if value is None:
            return _error(f"{call.name} timed out after {self.timeout_s} s")
        return _error(f"{call.name} raised {one_line(value, typed=True)}")

    def _check_arguments(self, call: ToolCall) -> str | None:
        """Why ``call``'s arguments do not fit its tool (names against the signature, JSON types
        against the schema), or None."""
        fn = self.tools[call.name]
        try:
            inspect.signature(fn).bind(**call.arguments)
        except TypeError as e:
            return f"bad arguments ({e})"
        except ValueError:  # no signature to check (a builtin): let the call say
            return None
        schema = next(s["function"] for s in self._schemas if s["function"]["name"] == call.name)
        properties = schema.get("parameters", {}).get("properties", {})
        for key, value in call.arguments.items():
            kinds = properties.get(key, {}).get("type")
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if not kinds or any(k not in _JSON_TYPES for k in kinds):
                continue
            if isinstance(value, bool) and "boolean" not in kinds:
                ok = False
            else:
                ok = any(isinstance(value, _JSON_TYPES[k]) for k in kinds)
            if not ok:
                return f"bad arguments ({key!r} must be {' or '.join(kinds)}, got {json.dumps(value)[:60]})"
        return None

    def _observation(self, responses: list[str]) -> str | list[dict]:
        if self.wrap_responses:
            return "\n".join(f"<tool_response>\n{r}\n</tool_response>" for r in responses)
        return [{"role": self.observation_role, "content": r} for r in responses]
