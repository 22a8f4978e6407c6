"""The inference service: batches equal single calls, a bad request fails alone, waits are reported, workers bounded."""

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest

from lungviz.inference import service as service_module
from lungviz.inference.images import ChestImage
from lungviz.inference.prediction import Classifier
from lungviz.inference.service import InferenceService, ThreadSettingError, tf_threads
from lungviz.inference.session import AnalysisSession
from lungviz.models.registry import discover, load_model
from tests.images_factory import chest_radiograph

WAIT = 60  # seconds: generous, only a broken service waits this long


@pytest.fixture
def service() -> Iterator[InferenceService]:
    queue = InferenceService(workers=1, gather_seconds=0.05, max_batch=4)
    yield queue
    queue.close()


@pytest.fixture
def batch_sizes(monkeypatch) -> list[int]:
    """The size of every batch the service executes (as one call, or one by one after a failure)."""
    sizes: list[int] = []
    execute = service_module._execute

    def recording(batch):
        sizes.append(len(batch))
        execute(batch)

    monkeypatch.setattr(service_module, "_execute", recording)
    return sizes


@contextmanager
def held_up(service: InferenceService) -> Iterator[None]:
    """The only worker busy until the block ends, so that requests made inside it queue up together."""
    release, started = threading.Event(), threading.Event()

    def hold(batch: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(WAIT)
        return batch

    blocker = threading.Thread(target=service.run, args=(hold, np.zeros((1, 1))))
    blocker.start()
    assert started.wait(WAIT)
    try:
        yield
    finally:
        release.set()
        blocker.join(WAIT)


def queued_together(service: InferenceService, calls: list[Callable[[], object]]) -> list[object]:
    """Each call in its own client thread, all queued behind a held-up worker, then released: results or errors."""
    outcomes: list[object] = [None] * len(calls)
    queued = [threading.Event() for _ in calls]

    def client(index: int) -> None:
        with service.client(lambda ahead: queued[index].set()):
            try:
                outcomes[index] = calls[index]()
            except Exception as error:  # noqa: BLE001 - the test compares what each caller got
                outcomes[index] = error

    with held_up(service):
        threads = [threading.Thread(target=client, args=(index,)) for index in range(len(calls))]
        for thread in threads:
            thread.start()
        assert all(event.wait(WAIT) for event in queued)  # every request waits behind the held-up one
    for thread in threads:
        thread.join(WAIT)
    return outcomes


@pytest.fixture(scope="module")
def cards(weights_root):
    return {card.name: card for card in discover(weights_root)["xray-pneumonia"]}


@pytest.mark.parametrize("model", ["flat-softmax", "nested-sigmoid"])
@pytest.mark.parametrize("method", ["gradcam", None])
def test_batched_results_equal_one_by_one_results(cards, service, batch_sizes, model, method):
    card = cards[model]
    alone = Classifier(card, load_model(card))
    queued = Classifier(card, alone.model, service)
    images = [chest_radiograph(120 + 10 * seed, 100, seed=seed).astype(np.float32) for seed in range(6)]
    expected = [alone.run(image, method) for image in images]
    queued.warm_up(method)
    batch_sizes.clear()

    results = queued_together(service, [partial(queued.run, image, method) for image in images])

    assert sorted(batch_sizes) == [1, 2, 4]  # the held-up request, then six requests in batches of at most four
    for got, want in zip(results, expected, strict=True):
        assert list(got.probabilities) == list(want.probabilities)
        np.testing.assert_allclose(list(got.probabilities.values()), list(want.probabilities.values()), atol=1e-5)
        assert got.predicted == want.predicted
        if method is None:
            assert got.heatmap is None
        else:
            np.testing.assert_allclose(got.heatmap, want.heatmap, atol=1e-4)
            assert got.heatmap.shape == want.heatmap.shape


def _doubled_unless_nan(batch: np.ndarray) -> np.ndarray:
    if np.isnan(batch).any():
        raise ValueError("not a number in the batch")
    return batch * 2


@pytest.mark.parametrize(
    ("bad", "error", "batches"),
    [
        ("fails inside the batch", ValueError, [1, 4]),  # run as one batch of four first, then one by one
        ("wrong input shape for the model", TypeError, [1, 3, 1]),  # never batched with the others
    ],
)
def test_a_failing_request_fails_only_itself(cards, service, batch_sizes, bad, error, batches):
    if bad == "fails inside the batch":
        function = _doubled_unless_nan
        good = [np.full((1, 3), float(k)) for k in range(3)]
        wrong, expected = np.full((1, 3), np.nan), [(2 * inputs,) for inputs in good]
    else:
        classifier = Classifier(cards["flat-softmax"], load_model(cards["flat-softmax"]))
        function = classifier.explainer("gradcam").probabilities_and_cams
        good = [np.full((1, 64, 64, 3), 40.0 * k, np.float32) for k in range(3)]
        wrong, expected = np.zeros((1, 32, 48, 3), np.float32), [function(inputs) for inputs in good]
    batch_sizes.clear()

    outcomes = queued_together(service, [partial(service.run, function, x) for x in [good[0], wrong, *good[1:]]])

    assert isinstance(outcomes[1], error)
    for got, want in zip([outcomes[0], *outcomes[2:]], expected, strict=True):
        for got_part, want_part in zip(got if isinstance(got, tuple) else (got,), want, strict=True):
            np.testing.assert_allclose(got_part, want_part, atol=1e-5)
    assert batch_sizes == batches


def test_a_batch_holds_at_most_max_batch_rows_and_a_larger_request_runs_alone(service, batch_sizes):
    inputs = [np.full((rows, 3), float(rows)) for rows in (2, 2, 5, 1)]
    batch_sizes.clear()

    outcomes = queued_together(service, [partial(service.run, _doubled_unless_nan, x) for x in inputs])

    assert batch_sizes == [1, 2, 1, 1]  # the held-up request; 2 + 2 rows; 5 rows alone; the last one
    for got, want in zip(outcomes, inputs, strict=True):
        np.testing.assert_array_equal(got, 2 * want)


def test_the_queue_position_reported_decreases_to_zero(service):
    reports: list[list[int]] = [[] for _ in range(4)]
    threads = []

    def client(index: int) -> None:
        with service.client(reports[index].append):
            service.run(partial(np.multiply, index), np.ones((1, 2)))  # a partial per call: each runs alone

    with held_up(service):
        for index in range(4):
            threads.append(threading.Thread(target=client, args=(index,)))
            threads[-1].start()
            deadline = time.monotonic() + WAIT
            while not reports[index] and time.monotonic() < deadline:  # queued before the next one comes
                time.sleep(0.005)
    for thread in threads:
        thread.join(WAIT)

    for index, seen in enumerate(reports):
        assert seen[0] == index + 1  # the held-up request and every earlier one
        assert seen[-1] == 0
        assert all(later < earlier for earlier, later in itertools.pairwise(seen))


def test_an_analysis_waiting_behind_another_says_so_in_its_progress(weights_root, service):
    session = AnalysisSession(weights_root, service=service)
    image = ChestImage(pixels=chest_radiograph().astype(np.float32), name="chest.png")
    session.analyse_image(image, task="xray-pneumonia")  # loads the models, so that only the queue is waited for
    messages: list[tuple[str, int, int]] = []

    def analyse() -> None:
        session.analyse_image(image, task="xray-pneumonia", progress=lambda *report: messages.append(report))

    with held_up(service):
        waiting = threading.Thread(target=analyse)
        waiting.start()
        deadline = time.monotonic() + WAIT
        while len(messages) < 2 and time.monotonic() < deadline:  # the step, then its wait behind the held-up call
            time.sleep(0.005)
    waiting.join(WAIT)

    assert messages[0] == ("flat-softmax: loading and running", 0, 2)
    assert messages[1] == ("waiting for the models: 1 request ahead", 0, 2)
    assert messages[2] == ("flat-softmax: loading and running", 0, 2)  # its turn: the step's own message again
    assert messages[-1] == ("done", 2, 2)


@pytest.mark.parametrize("workers", [1, 2])
def test_model_calls_never_run_on_more_threads_than_the_workers(workers):
    service = InferenceService(workers=workers, gather_seconds=0.0)
    lock, running, most = threading.Lock(), [0], [0]

    def counted(batch: np.ndarray, _: int) -> np.ndarray:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return batch

    threads = [
        threading.Thread(target=service.run, args=(partial(counted, _=index), np.zeros((1, 1)))) for index in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    service.close()
    assert most[0] == workers


@pytest.mark.parametrize(
    ("setting", "expected"), [("3", 3), ("", len(os.sched_getaffinity(0))), ("0", None), ("two", None)]
)
def test_tensorflow_threads_follow_the_cores_unless_the_variable_says(monkeypatch, setting, expected):
    monkeypatch.setenv("LUNGVIZ_TF_THREADS", setting)
    if expected is None:
        with pytest.raises(ThreadSettingError, match="LUNGVIZ_TF_THREADS must be a positive whole number"):
            tf_threads()
    else:
        assert tf_threads() == expected


def test_a_session_sets_tensorflows_threads_before_it_starts(weights_root):
    """In a new process, as the dashboard and the CLI make their session before any model loads."""
    script = (
        "import sys, tensorflow as tf\n"
        "from lungviz.inference.session import AnalysisSession\n"
        "AnalysisSession(sys.argv[1]).warm_up()\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(weights_root)],
        env={**os.environ, "LUNGVIZ_TF_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.split() == ["1", "1"]
