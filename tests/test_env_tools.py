"""Tool environments: Hermes tool-call parsing, the tool runner (errors, timeouts), the safe
calculator, and the built-in ``calculator`` environment's episodes and prompt streams."""

import json
import pickle
import threading
import time
from itertools import islice

import pytest

from asyncrl.envs.base import Step, checked_step
from asyncrl.envs.calculator import CalculatorEnvironment, calculator, evaluate_expression, parse_final_answer
from asyncrl.envs.tools import ToolCall, ToolCallError, ToolEnvironment, parse_tool_calls
from asyncrl.types import Prompt


def call(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def response(text: str) -> str:
    return f"<tool_response>\n{text}\n</tool_response>"


# -- parsing ---------------------------------------------------------------------------------------

def test_parse_one_call():
    turn = 'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n</tool_call>'
    assert parse_tool_calls(turn) == [ToolCall("calculator", {"expression": "2+3"})]


def test_parse_two_calls_in_order():
    turn = call("calculator", expression="1+1") + "\nand\n" + call("lookup", key="x", n=3)
    assert parse_tool_calls(turn) == [ToolCall("calculator", {"expression": "1+1"}),
                                      ToolCall("lookup", {"key": "x", "n": 3})]


def test_parse_no_call():
    assert parse_tool_calls("The answer is <answer>5</answer>") == []


@pytest.mark.parametrize("turn, words", [
    ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}\n</tool_call>', "not valid JSON"),
    ('<tool_call>\n{"arguments": {"expression": "1+1"}}\n</tool_call>', 'no "name"'),
    ('<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>', 'no "name"'),
    ('<tool_call>\n{"name": "calculator", "arguments": "1+1"}\n</tool_call>', '"arguments" must be a JSON object'),
    ('<tool_call>\n["calculator"]\n</tool_call>', "must be a JSON object"),
    ('<tool_call>\n{"name": "calculator", "arguments": {}}', "without a closing"),
    ('{"name": "calculator", "arguments": {}}\n</tool_call>', "without an opening"),
])
def test_parse_malformed_call_is_an_error_value(turn, words):
    got = parse_tool_calls(turn)
    assert isinstance(got, ToolCallError)
    assert words in got.message
    assert "\n" not in got.message


def test_parse_names_the_bad_call_among_several():
    turn = call("calculator", expression="1") + '<tool_call>{"name": 3}</tool_call>'
    got = parse_tool_calls(turn)
    assert isinstance(got, ToolCallError) and got.message.startswith("tool call 2 ")


# -- the calculator tool ---------------------------------------------------------------------------

@pytest.mark.parametrize("expression, result", [
    ("2+3*4", "14"),
    ("(2+3)*4", "20"),
    ("347 * 29 - 58", "10005"),
    ("7/2", "3.5"),
    ("84 / 4", "21"),
    ("-(6 - 10) * 2", "8"),
    ("2**10", "1024"),
    ("1.5 * 4", "6"),
    ("999999999999 * 999999999999", "999999999998000000000001"),
])
def test_calculator_computes(expression, result):
    assert calculator(expression) == result


@pytest.mark.parametrize("expression, words", [
    ("__import__('os').system('echo hi')", "not allowed"),
    ("__import__", "names like '__import__' are not allowed"),
    ("x + 1", "names like 'x'"),
    ("(1).real", "attribute access"),
    ("abs(-3)", "function calls"),
    ("'a' * 3", "only numbers"),
    ("[1, 2]", "not allowed"),
    ("1,234 + 1", "commas"),
    ("5 / (3 - 3)", "division by zero"),
    ("9**999999", "exponent too large"),
    ("10**200", "too large"),
    ("2 ^ 3", "operator ^ is not supported"),
    ("1 +", "not an arithmetic expression"),
    ("1+" * 150 + "1", "too long"),
])
def test_calculator_refuses(expression, words):
    start = time.monotonic()
    out = calculator(expression)
    assert time.monotonic() - start < 0.5
    assert out.startswith("error: ") and words in out, out


def test_evaluate_expression_keeps_integers_exact():
    assert evaluate_expression("10**30 / 10**28") == 100 and isinstance(evaluate_expression("6/3"), int)


@pytest.mark.parametrize("turn, value", [
    ("<answer>10005</answer>", 10005),
    ("<answer> 10,005 </answer>", 10005),
    ("<answer>1</answer> no, wait: <answer>-7.5</answer>", -7.5),
    ("10005", None),
    ("<answer>ten</answer>", None),
    ("<answer>nan</answer>", None),
])
def test_parse_final_answer(turn, value):
    assert parse_final_answer(turn) == value


# -- the tool runner -------------------------------------------------------------------------------

RELEASE = threading.Event()


def slow(x: int) -> int:
    """Wait (up to 30 s) before answering.

    Args:
        x: Any number.
    """
    RELEASE.wait(30)
    return x


def boom(x: int) -> int:
    """Always fail.

    Args:
        x: Any number.
    """
    raise RuntimeError(f"the tool broke on {x}")


class Scored(ToolEnvironment):
    name = "scored"

    def final_reward(self, state, turn):
        return 0.5


def test_a_hanging_tool_times_out_and_is_abandoned_in_a_daemon_thread():
    env = Scored([slow, calculator], timeout_s=0.2)
    state = env.reset(Prompt("p", "q"))
    start = time.monotonic()
    try:
        step = checked_step(env.step(state, call("slow", x=1)), "step")
        took = time.monotonic() - start
        hung = [t for t in threading.enumerate() if t.name == "tool-slow"]
        assert hung and all(t.daemon for t in hung)  # never keeps the interpreter from exiting
    finally:
        RELEASE.set()
    assert 0.15 < took < 1.0
    assert step == Step(response("error: slow timed out after 0.2 s"), 0.0, False)
    # the next call is unaffected
    assert env.step(state, call("calculator", expression="6*7")).observation == response("42")


def test_a_raising_tool_answers_with_its_error():
    env = Scored([boom])
    step = env.step(env.reset(Prompt("p", "q")), call("boom", x=3))
    assert step == Step(response("error: boom raised RuntimeError: the tool broke on 3"), 0.0, False)


def test_unknown_tool_and_bad_arguments_are_observations():
    env = CalculatorEnvironment()
    state = env.reset(Prompt("p", "q", {"answer": 1}))
    step = env.step(state, call("python", code="1+1"))
    assert step == Step(response("error: unknown tool 'python'; the tools are calculator"), 0.0, False)
    obs = env.step(state, call("calculator", expr="1+1")).observation
    assert obs.startswith(response("error: calculator: bad arguments")[:-len("\n</tool_response>")])
    assert "expr" in obs
    obs = env.step(state, call("calculator", expression=5)).observation
    assert obs == response("error: calculator: bad arguments ('expression' must be string, got 5)")
    assert state["tool_calls"] == 3 and state["errors"] == 3


def test_malformed_call_is_an_observation_not_the_end():
    env = CalculatorEnvironment()
    step = checked_step(env.step(env.reset(Prompt("p", "q", {"answer": 1})),
                                 '<tool_call>{"name": "calculator", "arguments": {</tool_call>'), "step")
    assert not step.done and step.reward == 0.0
    assert step.observation.startswith("<tool_response>\nerror: malformed tool call: tool call is not valid JSON")


def test_several_calls_answer_in_order_up_to_the_limit():
    env = CalculatorEnvironment(max_calls_per_turn=2)
    turn = call("calculator", expression="1+1") + call("calculator", expression="2*5") + call("calculator",
                                                                                              expression="3")
    step = env.step(env.reset(Prompt("p", "q", {"answer": 1})), turn)
    assert step.observation == "\n".join([response("2"), response("10"), response(
        "error: calculator not run: at most 2 tool calls per turn")])


def test_unwrapped_responses_are_tool_messages():
    env = CalculatorEnvironment(wrap_responses=False)
    step = checked_step(env.step(env.reset(Prompt("p", "q", {"answer": 1})),
                                 call("calculator", expression="2+2") + call("calculator", expression="1/0")), "step")
    assert step.observation == [{"role": "tool", "content": "4"},
                                {"role": "tool", "content": "error: division by zero"}]


def test_schemas_and_system_prompt():
    env = CalculatorEnvironment()
    (schema,) = env.tool_schemas()
    assert schema["type"] == "function" and schema["function"]["name"] == "calculator"
    assert schema["function"]["parameters"]["required"] == ["expression"]
    assert schema["function"]["parameters"]["properties"]["expression"]["type"] == "string"
    text = env.system_prompt()
    assert f"<tools>\n{json.dumps(schema)}\n</tools>" in text
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in text
    assert env.observation_role == "tool" and env.max_turns == 4 and env.name == "calculator"


def test_a_tool_without_docstring_is_refused():
    def bare(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="bare.*docstring"):
        Scored([bare])


# -- calculator episodes ---------------------------------------------------------------------------

PROBLEM = Prompt("p", "What is 347 * 29 - 58?", {"answer": 10005})  # 347*29 = 10063; 10063 - 58 = 10005


@pytest.mark.parametrize("final, reward", [
    ("So the answer is <answer>10005</answer>.", 1.0),
    ("<answer>10,005</answer>", 1.0),
    ("<answer>10063</answer>", 0.0),  # forgot the subtraction
    ("The answer is 10005.", 0.0),  # no answer tags
])
def test_two_turn_calculator_episode(final, reward):
    env = CalculatorEnvironment(timeout_s=1.0)
    state = env.reset(PROBLEM)
    step = checked_step(env.step(state, "I will use the tool.\n" + call("calculator", expression="347 * 29 - 58")),
                        "step")
    assert step == Step(response("10005"), 0.0, False)
    step = checked_step(env.step(state, final), "step")
    assert step == Step(None, reward, True)


def test_eval_prompts_are_fixed_and_well_formed():
    env = CalculatorEnvironment()
    prompts = env.eval_prompts()
    assert len(prompts) == 200 and [p.meta for p in prompts] == [p.meta for p in env.eval_prompts()]
    assert len({p.prompt_id for p in prompts}) == 200
    for p in prompts:
        problem = p.meta["problem"]
        tokens = problem.split()
        assert len(tokens) in (5, 7) and all(10 <= int(t) <= 999 for t in tokens[::2])
        assert set(tokens[1::2]) <= {"+", "-", "*"}
        assert p.meta["answer"] == eval(problem)  # our own generated "123 * 45 - 6"
        system, user = p.messages
        assert system == {"role": "system", "content": env.system_prompt("You are a helpful assistant.")}
        assert user["role"] == "user" and user["content"] == (
            f"What is {problem}? Use the calculator tool, then give the final answer inside <answer></answer> tags.")
    assert len(CalculatorEnvironment(eval_size=5).eval_prompts()) == 5


def test_train_streams_are_seeded():
    env = CalculatorEnvironment()

    def first(seed):
        return [p.meta["problem"] for p in islice(env.train_prompts(seed), 30)]

    assert first(0) == first(0)
    assert first(1) == first(1)
    assert first(0) != first(1)
    assert first(0) != [p.meta["problem"] for p in env.eval_prompts()[:30]]
    assert len(set(first(0))) == 30


def test_environment_pickles():
    env = pickle.loads(pickle.dumps(CalculatorEnvironment(timeout_s=2.0)))
    assert env.timeout_s == 2.0
    assert env.step(env.reset(PROBLEM), call("calculator", expression="2+3*4")).observation == response("14")


def test_lenient_answers_fall_back_to_the_last_number():
    from asyncrl.envs.calculator import parse_final_answer

    assert parse_final_answer("The result is 54,806.") is None
    assert parse_final_answer("The result is 54,806.", lenient=True) == 54806
    assert parse_final_answer("818 * 67 = -12.5 then 7", lenient=True) == 7
    assert parse_final_answer("<answer>3</answer> and 9", lenient=True) == 3  # tags win
    assert parse_final_answer("no number", lenient=True) is None
