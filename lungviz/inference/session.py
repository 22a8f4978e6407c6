"""An analysis session: the registry's models, loaded once, applied to files.

The CLI makes one session per process; a dashboard server shares one per
weights folder (`shared_session`) between all its pages. Either way each model
is loaded once, the modality gate routes each image to its task, the lungs are
found, and a bad file becomes an `Analysis` with an error instead of an exception.
Every model call (gate, lung segmenter, classifiers) goes through the process's
one inference service (`lungviz.inference.service`), which runs them on a fixed
number of threads and batches those of several viewers or files.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lungviz.errors import ChoiceError, ExplanationError, ImageInputError, LungVizError, ModelLoadError
from lungviz.inference.explanations import DEFAULT_METHOD
from lungviz.inference.images import ChestImage, load_image
from lungviz.inference.lungs import LUNGS_DIR, Lungs, XrayLungSegmenter, find_lungs, load_segmenter
from lungviz.inference.modality import GATE_DIR, ModalityAssessment, ModalityGate, assess_modality, load_gate
from lungviz.inference.prediction import PREDICTED, Classifier, ModelResult
from lungviz.inference.service import InferenceService, shared_service
from lungviz.models.cards import ModelCard
from lungviz.models.registry import discover, load_model, select_cards, weights_dir
from lungviz.reporting.export import file_record
from lungviz.tasks import TASKS, get_task

AUTO = "auto"
NO_LUNGS = (
    "no lungs were found in this image (another body part, or not a chest image?), so it was not classified; "
    "choose a task to analyse it anyway"
)
ProgressCallback = Callable[[str, int, int], None]
"""Called as (message, step, total_steps) while models load and run."""


@dataclass
class Analysis:
    """Everything known about one input file after analysis."""

    file: str
    image: ChestImage | None = None
    error: str | None = None
    modality: ModalityAssessment | None = None
    task: str | None = None
    warning: str | None = None
    lungs: Lungs | None = None
    """The lungs found for the chosen task (None where nothing looked: no task, or no X-ray segmenter)."""
    results: list[ModelResult] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Add a warning for the user, after any already given."""
        self.warning = f"{self.warning}; {message}" if self.warning else message

    def record(self) -> dict[str, Any]:
        return file_record(
            self.file,
            error=self.error,
            task=self.task,
            modality=self.modality.to_dict() if self.modality else None,
            warning=self.warning,
            lungs=self.lungs.to_dict() if self.lungs else None,
            results=self.results,
        )


class _Steps:
    """An analysis's progress, kept so that a wait in the models' queue is reported at the step it holds up."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.message, self.step, self.total = "checking the image", 0, 1

    def report(self, message: str, step: int, total: int) -> None:
        self.message, self.step, self.total = message, step, total
        if self.progress:
            self.progress(message, step, total)

    def waiting(self, ahead: int) -> None:
        """The service's report: the requests ahead while waiting, the step's own message again once it runs."""
        if self.progress:
            queue = f"waiting for the models: {ahead} request{'' if ahead == 1 else 's'} ahead"
            self.progress(queue if ahead else self.message, self.step, self.total)


class AnalysisSession:
    """Models of every task, loaded lazily and kept for the life of the process."""

    def __init__(self, weights: Path | None = None, service: InferenceService | None = None) -> None:
        self.root = Path(weights) if weights is not None else weights_dir()
        self.service = service if service is not None else shared_service()  # before TensorFlow starts: its threads
        self.cards: dict[str, list[ModelCard]] = discover(self.root)
        self._classifiers: dict[tuple[str, str], Classifier] = {}
        # One lock per model (and one for the gate): a model asked for while another thread loads it is
        # loaded once, and different models load side by side.
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._locks_lock = threading.Lock()
        # Loads the next models of an analysis while the current one runs. Two workers: loading is mostly
        # Python (the GIL), yet two at a time still cut a cold CLI run by about a second on this 2-core CPU.
        self._preparer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lungviz-prepare")
        self._warm_up_lock = threading.Lock()
        self._warm_up_thread: threading.Thread | None = None

    @property
    def tasks(self) -> list[str]:
        """Tasks that have at least one model."""
        return [task for task, cards in self.cards.items() if cards]

    def check_request(self, models: Sequence[str] | None, task: str = AUTO, target: str = PREDICTED) -> None:
        """Raise ChoiceError for model names or a class to explain that the chosen task(s) do not have."""
        cards = [card for t in (self.tasks if task == AUTO else [task]) for card in self.cards.get(t, [])]
        select_cards(list({card.name: card for card in cards}.values()), list(models) if models else None)
        classes = list(dict.fromkeys(c for card in cards for c in card.classes))
        if target != PREDICTED and target not in classes:
            raise ChoiceError(f"cannot explain class {target!r}; choose from {PREDICTED}, {', '.join(classes)}")

    def classifier(self, card: ModelCard) -> Classifier:
        key = (card.task, card.name)
        with self._lock(key):
            if key not in self._classifiers:
                self._classifiers[key] = Classifier(card, load_model(card), self.service)
            return self._classifiers[key]

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._locks_lock:
            return self._locks[key]

    def _prepared(self, card: ModelCard, method: str | None) -> Classifier:
        """The card's classifier with the method's explainer built (what a run needs before it computes)."""
        classifier = self.classifier(card)
        if method is not None:
            classifier.explainer(method)
        return classifier

    @cached_property
    def gate(self) -> ModalityGate | None:
        """The modality gate, loaded on first use (None where the weights folder has none)."""
        with self._lock(("", GATE_DIR)):
            gate = load_gate(self.root)
            return None if gate is None else replace(gate, embedding=self.service.batched(gate.embedding))

    @cached_property
    def segmenter(self) -> XrayLungSegmenter | None:
        """The chest X-ray lung segmenter, loaded on first use (None where the weights folder has none)."""
        with self._lock(("", LUNGS_DIR)):
            segmenter = load_segmenter(self.root)
            if segmenter is not None:
                segmenter.forward = self.service.batched(segmenter.forward)
            return segmenter

    def lungs(self, image: ChestImage, task: str) -> Lungs | None:
        """The lungs of an image routed to `task`, found the way that task's modality needs."""
        modality = get_task(task).modality
        segmenter = self.segmenter if modality == "xray" else None
        return find_lungs(image.pixels, modality, hounsfield=image.hounsfield, segmenter=segmenter)

    def warm_up(self, method: str | None = DEFAULT_METHOD) -> list[str]:
        """Load the gate and every model with its explainer, and run each once, before any image arrives.

        The first run of a compiled function also optimises its graph, so an
        image analysed after the warm-up pays none of the start-up cost. Meant
        for a background thread while the user picks a file (see
        `start_warm_up`); a model that fails here is skipped, and the analysis
        that needs it reports the failure. Returns those failures.
        """
        probe = np.full((256, 256), 0.5, np.float32)
        if self.gate is not None:
            self.gate.assess(probe)
        if self.segmenter is not None:
            self.segmenter.segment(probe)
        failures = []
        for task in self.tasks:
            for card in self.cards[task]:
                try:
                    self.classifier(card).warm_up(method)
                except LungVizError as error:
                    failures.append(f"{task}/{card.name}: {error}")
        return failures

    def start_warm_up(self, method: str | None = DEFAULT_METHOD) -> threading.Thread:
        """`warm_up` in a background thread, once per session; analyses meanwhile wait only for the models they need.

        Not a daemon: the interpreter waits for it at exit (seconds) instead of
        killing it inside TensorFlow, which aborts the process.
        """
        with self._warm_up_lock:
            if self._warm_up_thread is None:
                self._warm_up_thread = threading.Thread(target=self.warm_up, args=(method,), name="lungviz-warm-up")
                self._warm_up_thread.start()
            return self._warm_up_thread

    def choose_task(self, assessment: ModalityAssessment, requested: str = AUTO) -> tuple[str | None, str | None]:
        """The task to run and a warning for the user, if any.

        A manual task always wins. In auto mode an image the gate calls
        "other" is not classified: a confident answer on a photo would mislead.
        """
        if requested != AUTO:
            expected = get_task(requested).modality
            if assessment.predicted not in (None, expected):
                return requested, (
                    f"this image looks like {assessment.describe()}, but was sent to the {requested} models as asked"
                )
            return requested, None
        if assessment.predicted == "other":
            return None, (
                f"this does not look like a chest X-ray or chest CT slice "
                f"({assessment.describe()}); choose a task to analyse it anyway"
            )
        for task in TASKS.values():
            if task.modality == assessment.predicted and self.cards.get(task.name):
                return task.name, None
        fallback = self.tasks[0] if self.tasks else None
        return fallback, (
            None if fallback is None else f"modality unknown; using the {fallback} models (choose a task to change)"
        )

    def analyse_image(
        self,
        image: ChestImage,
        *,
        file: str | None = None,
        task: str = AUTO,
        models: Sequence[str] | None = None,
        method: str | None = "gradcam",
        target: str = PREDICTED,
        progress: ProgressCallback | None = None,
    ) -> Analysis:
        """Gate, route and run the selected models of the chosen task on one image.

        Its model calls are one client of the inference service: while they wait
        behind other viewers' calls, `progress` says how many requests are ahead.
        """
        steps = _Steps(progress)
        with self.service.client(steps.waiting):
            return self._analyse(image, file or image.name, task, models, method, target, steps)

    def _analyse(
        self,
        image: ChestImage,
        file: str,
        task: str,
        models: Sequence[str] | None,
        method: str | None,
        target: str,
        steps: _Steps,
    ) -> Analysis:
        analysis = Analysis(file=file, image=image)
        analysis.modality = assess_modality(image, self.gate)
        analysis.task, analysis.warning = self.choose_task(analysis.modality, task)
        if analysis.task is None:
            return analysis
        cards = [c for c in self.cards[analysis.task] if models is None or c.name in models]
        # The models load (mostly Python) while the lungs are found and while model k runs (TensorFlow, which
        # releases the GIL); an image without lungs leaves them loaded for the next one.
        ready = [self._preparer.submit(self._prepared, card, method) for card in cards]
        steps.message = "finding the lungs"
        analysis.lungs = self.lungs(image, analysis.task)
        if analysis.lungs is not None and not analysis.lungs.found:
            if task == AUTO:  # an abdominal slice or a knee film: a confident answer would mislead
                analysis.task = None
                analysis.warn(NO_LUNGS)
                return analysis
            analysis.warn("no lungs were found in this image; the models saw the whole image as asked")
        for step, (card, classifier) in enumerate(zip(cards, ready, strict=True)):
            steps.report(f"{card.name}: loading and running", step, len(cards))
            wanted = target if target == PREDICTED or target in card.classes else PREDICTED
            try:
                analysis.results.append(classifier.result().run(image.pixels, method, wanted, analysis.lungs))
            except (ModelLoadError, ExplanationError) as error:  # a broken model: say so, keep the others
                analysis.warn(f"model {card.name} could not run: {error}")
        steps.report("done", len(cards), len(cards))
        return analysis

    def analyse_bytes(self, data: bytes, name: str, **options: Any) -> Analysis:
        """Like `analyse_image`, from a file's bytes; unreadable files give an error record."""
        try:
            image = load_image(data, name)
        except ImageInputError as error:
            return Analysis(file=name, error=str(error))
        return self.analyse_image(image, file=name, **options)

    def analyse_path(self, path: str, **options: Any) -> Analysis:
        """Like `analyse_bytes`, from a file on disk; an unreadable file gives an error record."""
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            return Analysis(file=path, error=f"{path}: cannot read file ({error.strerror or error})")
        return self.analyse_bytes(data, path, **options)

    def analyse_paths(self, paths: Iterable[str], **options: Any) -> Iterator[Analysis]:
        """`analyse_path` of each file, in order, as many at a time as the service batches, so their model calls share.

        No more analyses (images and heatmaps) are held at once: the next file
        starts when the caller takes the oldest.
        """
        at_once = self.service.max_batch
        started: deque[Future[Analysis]] = deque()
        with ThreadPoolExecutor(at_once, thread_name_prefix="lungviz-analyse") as pool:
            try:
                for path in paths:
                    if len(started) == at_once:
                        yield started.popleft().result()
                    started.append(pool.submit(self.analyse_path, path, **options))
                while started:
                    yield started.popleft().result()
            finally:  # a caller that stops early (an interrupt) waits for the running files only
                for future in started:
                    future.cancel()


_SHARED: dict[Path, AnalysisSession] = {}
_SHARED_LOCK = threading.Lock()


def shared_session(weights: Path | None = None) -> AnalysisSession:
    """The process's one session for a weights folder, shared by everything that serves users from it.

    A dashboard server pre-warms it before the first page opens, and every
    page of every viewer then uses the same loaded models.
    """
    root = (Path(weights) if weights is not None else weights_dir()).resolve()
    with _SHARED_LOCK:
        if root not in _SHARED:
            _SHARED[root] = AnalysisSession(root)
        return _SHARED[root]
