"""asyncrl: asynchronous, off-policy RL post-training of language models.

    from asyncrl import Config, train
    summary = train(Config(loss="grpo", steps=200), reward_funcs=my_reward, train_dataset=rows)

(:mod:`asyncrl.api`; the command line is ``asyncrl train``, a thin layer over the same entry point.)
"""

__version__ = "0.1.0"

__all__ = ["Config", "RunFailed", "train"]


def __getattr__(name: str):
    # Lazy: `import asyncrl` (and so `asyncrl plot`) stays cheap; `train` pulls in torch.
    if name == "Config":
        from asyncrl.config import Config

        return Config
    if name in ("train", "RunFailed"):
        from asyncrl import api

        return getattr(api, name)
    raise AttributeError(f"module 'asyncrl' has no attribute {name!r}")
