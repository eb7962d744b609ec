"""User-style reward functions for the custom-task tests (imported as ``tests.reward_fns:NAME``).

Written as TRL's GRPOTrainer calls them (keyword arguments: ``prompts``, ``completions``, the
dataset columns, ...); rows with ``bad`` set trigger the misbehaviour under test. ``exact_legacy``
keeps asyncrl's old ``(prompts, completions, rows)`` form.
"""

import asyncio
import math


def exact(completions, answer, **kwargs):
    return [1.0 if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer)]


def exact_legacy(prompts, completions, rows):
    return [1.0 if c.strip() == str(r["answer"]) else 0.0 for c, r in zip(completions, rows)]


def raises_on_bad(completions, answer, bad=None, **kwargs):
    if any(bad or []):
        raise ZeroDivisionError("bad row reached the reward")
    return exact(completions, answer)


def nan_on_bad(completions, answer, bad=None, **kwargs):
    bad = bad or [None] * len(completions)
    return [math.nan if b else v for v, b in zip(exact(completions, answer), bad)]


def one_short(completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def not_a_list(completions, **kwargs):
    return 1.0


def fails_in_batches(completions, **kwargs):
    if len(completions) > 1:
        raise RuntimeError("batch too big")
    return [0.5]


not_callable = 3


def slow_exact(completions, answer, **kwargs):
    """``exact``, 0.2 s per call: keeps a request in flight long enough to kill its worker."""
    import time

    time.sleep(0.2)
    return exact(completions, answer)


def inf_always(completions, **kwargs):
    return [math.inf] * len(completions)


def short(completions, **kwargs):
    """A second reward: 1 for completions of at most 2 characters."""
    return [1.0 if len(c.strip()) <= 2 else 0.0 for c in completions]


def only_even_ids(completions, id, **kwargs):  # noqa: A002 - the dataset column is called id
    """Scores rows whose ``id`` is even; None (not scored) for the others."""
    return [1.0 if i % 2 == 0 else None for i in id]


def none_always(completions, **kwargs):
    return [None] * len(completions)


async def async_exact(completions, answer, **kwargs):
    await asyncio.sleep(0.01)
    return exact(completions, answer)


def everything(prompts, completions, completion_ids, trainer_state, **kwargs):
    """Records what it was called with (the test reads ``everything.calls``)."""
    everything.calls.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                             "trainer_state": trainer_state, **kwargs})
    return [0.0] * len(completions)


everything.calls = []


# --- the soak test's injected generator faults -------------------------------------------------------
# With ASYNCRL_TEST_FAULT_RATE set, a spawned generator process (the custom task imports this module
# there) raises from Generator.generate with that probability per request, a fault the run must
# survive by replacing the worker. Never in the main process, and never without the variable.
def _inject_generator_faults() -> None:
    import multiprocessing
    import os
    import random

    rate = float(os.environ.get("ASYNCRL_TEST_FAULT_RATE", "0"))
    if rate <= 0 or multiprocessing.parent_process() is None:
        return
    from asyncrl.generator import Generator

    real, rng = Generator.generate, random.Random(os.getpid())

    def generate(self, num_prompts, **kw):
        if rng.random() < rate:
            raise RuntimeError("injected generator fault (soak test)")
        return real(self, num_prompts, **kw)

    Generator.generate = generate


_inject_generator_faults()
