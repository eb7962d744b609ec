"""Environments the end-to-end tests load by ``--env tests.env_fixtures:NAME`` (run from the repo root)."""

import time

from asyncrl.envs import Step
from asyncrl.envs.retry import ArithmeticRetryEnvironment


class SlowRetry(ArithmeticRetryEnvironment):
    """``arithmetic_retry`` whose steps take ``delay_s``: a generator is mid-episode most of the time."""

    name = "slow_retry"

    def __init__(self, delay_s: float = 0.01, **kw):
        super().__init__(**kw)
        self.delay_s = delay_s

    def step(self, state, turn):
        time.sleep(self.delay_s)
        return super().step(state, turn)


def slow_retry(delay_s: float = 0.01, max_turns: int = 4):
    return SlowRetry(delay_s, max_turns=max_turns)


class Raising(ArithmeticRetryEnvironment):
    """Raises on the problems whose answer is a multiple of 3 (about a third of them)."""

    name = "raising"

    def step(self, state, turn):
        if state["prompt"].meta["answer"] % 3 == 0:
            raise RuntimeError("the board is on fire")
        return super().step(state, turn)


class AlwaysRaising(ArithmeticRetryEnvironment):
    name = "always_raising"

    def step(self, state, turn):
        raise RuntimeError("the board is on fire")


class Endless(ArithmeticRetryEnvironment):
    """Never ends an episode: the turn limit must."""

    name = "endless"

    def step(self, state, turn):
        return Step(state["prompt"].text, 0.0, False)


class Malformed(ArithmeticRetryEnvironment):
    """Answers with an observation that is neither text nor chat messages."""

    name = "malformed"

    def step(self, state, turn):
        return Step({"role": "user"}, 0.0, False)
