"""Each generator samples from its own ``torch.Generator``: building and running a generator in
the caller's process (inline and thread workers share it with the learner) leaves the process RNG
as it was, and a generator's random state travels in its ``GeneratorState`` for an exact resume."""

import torch

from asyncrl.config import Config
from asyncrl.engines.hf import borrowed_rng
from asyncrl.policy import BUILTIN_MODELS
from asyncrl.runtime.messages import GeneratorState
from asyncrl.runtime.transport import DirectReceiver
from asyncrl.runtime.worker import GeneratorService, WorkerSpec, build_generator

BASE = str(BUILTIN_MODELS["arithmetic"])
CFG = Config(samples_per_prompt=2, max_new_tokens=4)


def _service(worker_id: int = 0) -> GeneratorService:
    return GeneratorService(build_generator(WorkerSpec.of(CFG, BASE, worker_id)), DirectReceiver(), worker_id)


def _ids(groups) -> list:
    return [s.completion_ids for g in groups for s in g.samples]


def test_building_and_sampling_leave_the_callers_rng_untouched():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    service = _service()
    service.generate(_request(3))
    assert torch.equal(torch.get_rng_state(), before)


def _request(num_prompts: int):
    from asyncrl.runtime.messages import GenerateRequest

    return GenerateRequest(0, num_prompts)


def test_samples_equal_those_of_a_process_seeded_like_the_generator():
    """What the old code did (``torch.manual_seed(sample_seed)`` on the process, then sample), so
    process workers draw exactly what they drew before."""
    a = _service()
    seed = CFG.seed * 7919 + 0
    got = _ids(a.generate(_request(2)).groups)
    b = _service()
    b.generator.engine.generator = None  # sample from the process RNG, seeded the old way
    torch.manual_seed(seed)
    assert _ids(b.generate(_request(2)).groups) == got


def test_interleaved_generators_draw_their_own_streams():
    alone = [_ids(_service(w).generate(_request(2)).groups) for w in (0, 1)]
    s0, s1 = _service(0), _service(1)
    torch.manual_seed(99)  # whatever the caller does in between must not matter
    first1 = _ids(s1.generate(_request(2)).groups)
    torch.rand(10)
    first0 = _ids(s0.generate(_request(2)).groups)
    assert [first0, first1] == alone
    assert alone[0] != alone[1]


def test_state_restores_the_sampling_stream_exactly():
    a = _service()
    a.generate(_request(2))
    state = a.state()
    assert isinstance(state.rng, torch.Tensor)
    expected = _ids(a.generate(_request(2)).groups)
    b = _service()
    b.restore(GeneratorState(**{**state.to_dict()}))
    assert _ids(b.generate(_request(2)).groups) == expected


def test_a_checkpoint_from_before_per_generator_rngs_restores_the_process_worker_stream():
    """Older checkpoints saved a process worker's process RNG (``torch_rng``), which only its
    sampling drew from: it becomes the generator's state."""
    a = _service()
    a.generate(_request(2))
    old = GeneratorState(*a.generator.stream_state(), torch_rng=a.generator.rng.get_state())
    expected = _ids(a.generate(_request(2)).groups)
    b = _service()
    b.restore(old)
    assert _ids(b.generate(_request(2)).groups) == expected


def test_borrowed_rng_gives_the_process_rng_back_and_advances_the_generator():
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with borrowed_rng(g):
        x = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(x, torch.rand(3, generator=torch.Generator().manual_seed(7)))
    with borrowed_rng(g):
        y = torch.rand(3)
    ref = torch.Generator().manual_seed(7)
    torch.rand(3, generator=ref)
    assert torch.equal(y, torch.rand(3, generator=ref))
