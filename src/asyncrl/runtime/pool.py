"""``WorkerPool``: the generator workers of one run, whatever host runs them.

It starts ``num_generators`` workers, one per *generator slot*, and keeps which worker holds which
slot: a worker that dies or raises is replaced under a fresh worker id in the lost one's slot (its
prompt stream's position is the slot's, see ``generator_states``), its requests go back to the
scheduler for re-dispatch, and a replacement is sent the latest weights before any request. More
than ``max_generator_restarts`` losses in this process set :attr:`failure` instead of replacing.
A failure before every first worker was ready raises ``RunFailed`` (a bad model or a missing
package would only fail again); so does a worker's user error (``WorkerError.user_error``).

Messages from workers arrive through :meth:`handle`; requests go out through :meth:`dispatch`
(what the ``Scheduler``'s lag gate allows), weights through :meth:`publish`. No model here: a
host, a scheduler and a ``RunStats`` are all it needs (tests use fakes).
"""

from __future__ import annotations

from typing import Callable

from asyncrl.errors import RunFailed, one_line
from asyncrl.runtime.hosts import Host, Worker
from asyncrl.runtime.messages import (
    FromWorker, GeneratorState, RequestDone, RestoreGenerator, WeightsUpdate, WorkerError, WorkerLost, WorkerReady,
)
from asyncrl.runtime.scheduler import Scheduler
from asyncrl.runtime.stats import RunStats
from asyncrl.weights import distinct_bytes
from asyncrl.types import GenStats


class WorkerPool:
    def __init__(self, host: Host, scheduler: Scheduler, stats: RunStats, *, num_generators: int,
                 max_restarts: int, version: Callable[[], int], note: Callable[[str], None],
                 resumed_states: list[GeneratorState | None] | None = None):
        """``version()``: the learner's current version (a worker starts from it); ``note(text)``:
        where a lost worker is reported (the progress bar); ``resumed_states``: per slot, the
        generator state a resumed run's first workers continue from (None: start fresh)."""
        self.host = host
        self.scheduler = scheduler
        self.stats = stats
        self.num_generators = num_generators
        self.max_restarts = max_restarts
        self._version = version
        self._note = note
        self._resumed = list(resumed_states or [])
        self.workers: dict[int, Worker] = {}  # live workers by id
        self.slot_of: dict[int, int] = {}  # worker id -> generator slot (a replacement takes the lost one's)
        self.ready: set[int] = set()  # workers that reported ready and take requests
        self.states: dict[int, GeneratorState] = {}  # slot -> generator state after its last trained request
        self.latest: WeightsUpdate | None = None  # what a (re)started worker is sent before any request
        self.pending: list[GenStats] = []  # stats of replies accepted since the last learner step
        self.started = False  # every first worker was ready once; failures before that are not restarted
        self.failure: str | None = None  # set when the workers failed more than max_restarts times
        self._next_id = 0

    # --- start-up -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start one worker per slot (they report ``WorkerReady`` through :meth:`handle`)."""
        for slot in range(self.num_generators):
            self._start(slot)

    def all_ready(self) -> bool:
        return len(self.ready) >= self.num_generators

    def _start(self, slot: int) -> None:
        wid, self._next_id = self._next_id, self._next_id + 1
        self.slot_of[wid] = slot
        self.workers[wid] = self.host.start(wid, self._version(), slot)

    # --- traffic ------------------------------------------------------------------------------------
    def dispatch(self, step: int, published: int, ahead_samples: int = 0) -> None:
        """Send every request the scheduler's gate allows now (``ahead_samples``: see
        ``ContinuousScheduler``)."""
        for wid, req in self.scheduler.dispatch(step, published, ahead_samples):
            self.workers[wid].send(req)

    def publish(self, state: dict, version: int) -> None:
        """Hand ``state`` (weights of learner ``version``) to the host's publisher, send the update
        to every ready worker and keep it for the ones that start later."""
        self.stats.add_publish(distinct_bytes(state))  # what a transport moves (the adapter only, with LoRA)
        update = self.latest = self.host.publisher.publish(state, version)
        for wid in self.ready:
            self.workers[wid].send(update)

    def record(self, done: RequestDone) -> None:
        """``done`` is about to be trained on: its generator's state is its slot's from now on."""
        if done.generator_state is not None:
            self.states[self.slot_of[done.worker_id]] = done.generator_state

    def generator_states(self) -> list[dict | None]:
        """Per slot, the generator state to save in a checkpoint (None: no request trained yet)."""
        return [self.states[i].to_dict() if i in self.states else None for i in range(self.num_generators)]

    def take_pending(self) -> list[GenStats]:
        """The stats of the replies accepted since the last call (for one metrics row)."""
        pending, self.pending = self.pending, []
        return pending

    # --- messages -----------------------------------------------------------------------------------
    def handle(self, msg: FromWorker) -> None:
        if isinstance(msg, RequestDone):
            accepted = self.scheduler.complete(msg.worker_id, msg.request_id, msg)  # False: late or a 2nd reply
            self.stats.add_reply(msg.samples, msg.stats, msg.weight_load_s, accepted)
            if accepted:
                self.pending.append(msg.stats)
        elif isinstance(msg, WorkerReady):
            self._ready(msg.worker_id)
        elif isinstance(msg, WorkerError) and msg.user_error:
            raise RunFailed(msg.message)
        elif isinstance(msg, (WorkerError, WorkerLost)):
            reason = msg.message if isinstance(msg, WorkerError) else msg.reason
            if not self.started:
                # Failing before the run even started (bad model, missing package): no restart loop.
                raise RunFailed(f"generator {msg.worker_id} failed to start:\n{reason}")
            self._replace(msg.worker_id, reason)

    def _ready(self, wid: int) -> None:
        if wid not in self.workers:
            return  # replaced meanwhile
        self.ready.add(wid)
        slot = self.slot_of[wid]
        if not self.started and slot < len(self._resumed) and self._resumed[slot] is not None:
            # A resumed run's first workers continue their slot's prompt stream and RNG.
            self.workers[wid].send(RestoreGenerator(self._resumed[slot]))
        if self.latest is not None:
            self.workers[wid].send(self.latest)
        self.scheduler.add_worker(wid)

    def _replace(self, wid: int, reason: str) -> None:
        """A worker died or raised: re-dispatch its requests and start a fresh one in its slot."""
        if wid not in self.workers:
            return  # already replaced (e.g. a WorkerLost after its WorkerError)
        lost = self.scheduler.remove_worker(wid)
        self.workers.pop(wid).kill()
        self.host.publisher.remove_worker(wid)  # broadcast: leave it out of the group; others: nothing
        self.ready.discard(wid)
        self.stats.add_restart()  # the limit is per process: a resumed run starts over
        self._note(f"generator {wid} lost ({one_line(reason, 'last')}); "
                   f"{len(lost)} request(s) to re-dispatch, starting a replacement")
        if self.stats.restarts > self.max_restarts:
            self.failure = (f"generator workers failed {self.stats.restarts} times, more than "
                            f"max_generator_restarts={self.max_restarts}; last: {one_line(reason, 'last')}")
            return
        self._start(self.slot_of[wid])

    def close(self) -> None:
        """Stop every worker and the weight transport (the host closes its own publisher)."""
        self.host.close()
