"""User-style skyrl-gym environments for tests/test_env_skyrl.py (imported as ``tests.skyrl_envs:NAME``)."""

from __future__ import annotations

from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput

CLOSED: list[str] = []  # every StopEnv.close() call appends the word of its episode


class StopEnv(BaseTextEnv):
    """Asks again until the turn contains the row's word (``reward_spec.ground_truth``): reward
    1 / turns then; 0 when ``max_turns`` (extras, default 7) turns pass without it. Observations
    are ``"<env_config.prefix> <turn>"`` user messages (env_config read by attribute, as
    skyrl-gym's own environments do)."""

    def __init__(self, env_config=None, extras: dict | None = None):
        super().__init__()
        extras = extras or {}
        self.word = extras["reward_spec"]["ground_truth"]
        self.prefix = env_config.prefix
        self.max_turns = extras.get("max_turns", 7)

    def step(self, action: str) -> BaseTextEnvStepOutput:
        self.turns += 1
        if self.word in action:
            return BaseTextEnvStepOutput(observations=[], reward=1.0 / self.turns, done=True, metadata={"said": True})
        if self.turns >= self.max_turns:
            return BaseTextEnvStepOutput(observations=[], reward=0.0, done=True, metadata={"said": False})
        return BaseTextEnvStepOutput(observations=[{"role": "user", "content": f"{self.prefix} {self.turns}"}],
                                     reward=0.0, done=False, metadata={})

    def close(self):
        CLOSED.append(self.word)


class RewritingEnv(StopEnv):
    """init() puts a system message before the row's prompt (as skyrl-gym's ``rlm`` does)."""

    def init(self, prompt):
        return [{"role": "system", "content": "be brief"}] + prompt, {}


class NotAnEnv:
    pass
