"""One inference service per process: a short queue in front of the models, shared by every session.

Why: a dashboard server at a conference faces many uploads at once. When each
viewer's thread ran its own TensorFlow calls, eight of them fought for two
cores and the same model ran eight times on batches of one (the slowest of
eight viewers waited 61 s where eight uploads in a row took 34 s). Here a
fixed number of worker threads (one by default) execute every model call, so
the cores are never oversubscribed, and requests that call the same function
on inputs of the same shape and arrive together run as one batch.

A request is a function of a batch (inputs (n, ...) -> outputs whose leading
dimension is n, or a tuple of such arrays) and its inputs. Requests share a
batch when they name the same function object (or equal bound methods) and
their inputs have the same shape after the first dimension; a `partial` made
per call therefore always runs alone, which suits work that cannot be batched.
A batch that fails is run again one request at a time, so a bad request fails
only itself.

Whoever serves a person wraps its work in `client(on_wait)`: the service then
knows how many requests could still join a batch (it stops gathering early
when all of them have), and `on_wait` hears how many requests are ahead of
that person's while they wait.
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from lungviz.errors import LungVizError

THREADS_VARIABLE = "LUNGVIZ_TF_THREADS"
"""Environment variable that overrides TensorFlow's intra-op thread count (default: the cores this process may use)."""
GATHER_SECONDS = 0.04
"""How long a request that finds the models idle waits for others of its kind (only while others could come)."""
MAX_BATCH = 8
"""Images (input rows) per batch; a request with more (a faithfulness curve) runs alone, as it came."""

WaitReport = Callable[[int], None]
"""Called with the number of requests ahead of a waiting one each time it changes (0: it runs now)."""
BatchFunction = Callable[[np.ndarray], Any]


class ThreadSettingError(LungVizError):
    """LUNGVIZ_TF_THREADS is not a positive whole number."""


def tf_threads() -> int:
    """TensorFlow's intra-op threads for this process: LUNGVIZ_TF_THREADS, else the cores it may run on.

    `os.sched_getaffinity` rather than `os.cpu_count`: a container or `taskset`
    that allows 2 of a host's 64 cores must not get 64-thread pools.
    """
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise ThreadSettingError(f"{THREADS_VARIABLE} must be a positive whole number, not {value!r}")
    return int(value)


def configure_threads() -> bool:
    """Give TensorFlow `tf_threads()` intra-op threads and one inter-op thread, before it initialises.

    One worker runs one model call at a time, and these graphs are chains of
    large ops: parallelism inside each op uses every core, while more inter-op
    threads would only let a graph's ops compete for the same cores. Returns
    False, changing nothing, where TensorFlow already runs (a host that set its
    own threads, or a test process): its pools cannot be resized then.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(tf_threads())
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        return False
    return True


@dataclass(eq=False)
class _Client:
    """One person's work (an analysis): who to tell about waiting."""

    on_wait: WaitReport | None


@dataclass(eq=False)
class _Request:
    function: BatchFunction
    inputs: np.ndarray
    order: int
    arrived: float
    client: _Client | None
    running: bool = False
    done: bool = False
    outputs: Any = None
    error: BaseException | None = None

    @property
    def group(self) -> Hashable:
        """Requests of one group can be concatenated into one batch."""
        return self.function, self.inputs.shape[1:], self.inputs.dtype.str


_CLIENT: contextvars.ContextVar[_Client | None] = contextvars.ContextVar("lungviz_inference_client", default=None)


@dataclass(eq=False)
class InferenceService:
    """A queue in front of the models, executed by `workers` threads, gathering batches of up to `max_batch` rows."""

    workers: int = 1
    gather_seconds: float = GATHER_SECONDS
    max_batch: int = MAX_BATCH
    _changed: threading.Condition = field(default_factory=threading.Condition, init=False)
    _pending: list[_Request] = field(default_factory=list, init=False)
    _running: list[_Request] = field(default_factory=list, init=False)
    _gathering: set[Hashable] = field(default_factory=set, init=False)
    _clients: set[_Client] = field(default_factory=set, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _order: Iterator[int] = field(default_factory=itertools.count, init=False)
    _closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_batch < 1:
            raise ValueError("an inference service needs at least one worker and batches of at least one")

    @contextmanager
    def client(self, on_wait: WaitReport | None = None) -> Iterator[None]:
        """Everything run inside this block is one person's: waits are reported to `on_wait`."""
        client = _Client(on_wait)
        with self._changed:
            self._clients.add(client)
        token = _CLIENT.set(client)
        try:
            yield
        finally:
            _CLIENT.reset(token)
            with self._changed:
                self._clients.discard(client)
                self._changed.notify_all()  # a gathering worker may stop waiting for this client

    def run(self, function: BatchFunction, inputs: np.ndarray) -> Any:
        """`function(inputs)` executed by a worker, possibly inside a larger batch; its outputs as NumPy arrays.

        Blocks until done and raises what the function raised for these inputs.
        """
        client = _CLIENT.get()
        with self._changed:
            if self._closed:
                raise RuntimeError("the inference service has been closed")
            request = _Request(function, np.asarray(inputs), next(self._order), time.monotonic(), client)
            self._pending.append(request)
            self._start_workers()
            self._changed.notify_all()
        reported = 0  # nothing ahead at first says nothing: a lone viewer never sees a queue
        finished = False
        while not finished:
            with self._changed:
                while not request.done and self._ahead(request) == reported:
                    self._changed.wait()
                finished = request.done
                ahead = 0 if finished else self._ahead(request)
            if ahead != reported and client is not None and client.on_wait is not None:
                client.on_wait(ahead)  # outside the lock: it may draw on a page
            reported = ahead
        if request.error is not None:
            raise request.error
        return request.outputs

    def batched(self, function: BatchFunction) -> BatchFunction:
        """`function` with its calls going through this service (for code that takes a model as a function)."""
        return partial(self.run, function)

    def close(self) -> None:
        """Let the workers finish their batch and stop (at exit: a thread inside TensorFlow then would abort)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _start_workers(self) -> None:
        if not self._threads:
            for index in range(self.workers):
                thread = threading.Thread(target=self._work, name=f"lungviz-models-{index}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _ahead(self, request: _Request) -> int:
        """Requests submitted earlier that have not finished; never grows, since later ones are not counted."""
        if request.running:
            return 0
        return sum(other.order < request.order for other in (*self._pending, *self._running))

    def _work(self) -> None:
        while True:
            with self._changed:
                batch = self._next_batch()
                if batch is None:
                    return
            _execute(batch)
            with self._changed:
                for request in batch:
                    request.done = True
                    self._running.remove(request)
                self._changed.notify_all()

    def _next_batch(self) -> list[_Request] | None:
        """The oldest request's group, after waiting (up to the gathering time) for the others that could join it."""
        while not self._closed:
            first = next((r for r in self._pending if r.group not in self._gathering), None)
            if first is None:
                self._changed.wait()
                continue
            group = first.group
            self._gathering.add(group)
            try:
                deadline = first.arrived + self.gather_seconds
                while not self._closed and not self._ready(group):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            finally:
                self._gathering.discard(group)
            batch = self._members(group)
            for request in batch:
                self._pending.remove(request)
                request.running = True
            self._running.extend(batch)
            self._changed.notify_all()
            return batch
        for request in self._pending:  # closed: nobody will run these
            request.error, request.done = RuntimeError("the inference service has been closed"), True
        self._changed.notify_all()
        return None

    def _members(self, group: Hashable) -> list[_Request]:
        """The group's oldest requests that fit in `max_batch` rows together (at least one, however large)."""
        members: list[_Request] = []
        rows = 0
        for request in self._pending:
            if request.group == group:
                rows += len(request.inputs)
                if members and rows > self.max_batch:
                    break
                members.append(request)
        return members

    def _ready(self, group: Hashable) -> bool:
        """Whether the group's batch should go now: it is full, or every client that could still join it has.

        A client held up by another group's request cannot join before that
        one is done; one between requests (finding lungs, drawing) might.
        """
        members = self._members(group)
        queued = sum(r.group == group for r in self._pending)
        if len(members) < queued or sum(len(r.inputs) for r in members) >= self.max_batch:
            return True  # full
        busy = {r.client for r in (*self._pending, *self._running) if r.group != group and r.client is not None}
        return len(members) >= len(self._clients - busy)


def _execute(batch: list[_Request]) -> None:
    """Run a batch as one call; if that fails, each request alone, so that only a bad one keeps its error."""
    if len(batch) > 1:
        try:
            inputs = np.concatenate([r.inputs for r in batch])
            outputs = _as_numpy(batch[0].function(inputs))
            ends = np.cumsum([len(r.inputs) for r in batch])
            for request, stop in zip(batch, ends, strict=True):
                request.outputs = _rows(outputs, stop - len(request.inputs), stop, len(inputs))
            return
        except Exception:  # noqa: BLE001 - any failure is retried one by one below, where it is reported
            pass
    for request in batch:
        try:
            request.outputs = _as_numpy(request.function(request.inputs))
        except Exception as error:  # noqa: BLE001 - handed to the request's caller, who re-raises it
            request.error = error


def _as_numpy(outputs: Any) -> Any:
    if isinstance(outputs, tuple | list):
        return type(outputs)(_as_numpy(item) for item in outputs)
    return np.asarray(outputs)


def _rows(outputs: Any, start: int, stop: int, total: int) -> Any:
    """Rows start:stop of every array in `outputs`, which must have one row per input row (`total`)."""
    if isinstance(outputs, tuple | list):
        return type(outputs)(_rows(item, start, stop, total) for item in outputs)
    if len(outputs) != total:
        raise ValueError(f"a batch of {total} rows gave {len(outputs)} rows of outputs")
    return outputs[start:stop]


_SHARED: InferenceService | None = None
_SHARED_LOCK = threading.Lock()


def shared_service() -> InferenceService:
    """The process's one service; creating it sets TensorFlow's threads (`configure_threads`) before a model loads."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            configure_threads()
            _SHARED = InferenceService()
            atexit.register(_SHARED.close)
        return _SHARED
