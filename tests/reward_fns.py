"""User-style reward functions for the custom-task tests (imported as ``tests.reward_fns:NAME``).

Each takes (prompts, completions, rows) as the custom task passes them; rows with ``"bad": true``
trigger the misbehaviour under test.
"""

import math


def exact(prompts, completions, rows):
    return [1.0 if c.strip() == str(r["answer"]) else 0.0 for c, r in zip(completions, rows)]


def raises_on_bad(prompts, completions, rows):
    for r in rows:
        if r.get("bad"):
            raise ZeroDivisionError("bad row reached the reward")
    return exact(prompts, completions, rows)


def nan_on_bad(prompts, completions, rows):
    return [math.nan if r.get("bad") else v for v, r in zip(exact(prompts, completions, rows), rows)]


def one_short(prompts, completions, rows):
    return [0.0] * (len(completions) - 1)


def not_a_list(prompts, completions, rows):
    return 1.0


def fails_in_batches(prompts, completions, rows):
    if len(completions) > 1:
        raise RuntimeError("batch too big")
    return [0.5]


not_callable = 3


def slow_exact(prompts, completions, rows):
    """``exact``, 0.2 s per call: keeps a request in flight long enough to kill its worker."""
    import time

    time.sleep(0.2)
    return exact(prompts, completions, rows)


def inf_always(prompts, completions, rows):
    return [math.inf] * len(completions)


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

    def generate(self, num_prompts):
        if rng.random() < rate:
            raise RuntimeError("injected generator fault (soak test)")
        return real(self, num_prompts)

    Generator.generate = generate


_inject_generator_faults()
