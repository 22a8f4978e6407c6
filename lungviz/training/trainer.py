"""Training a classifier for one task, resumable, ending in a `.keras` file with its model card.

Recipe. Transfer models train in two stages: (1) the new head on a frozen
ImageNet backbone at a higher learning rate; (2) the top N backbone blocks
unfrozen at a lower rate, batch normalisation kept in inference mode (its
ImageNet statistics and scale stay fixed, which is what keeps fine-tuning on a
few thousand images stable). Stage 1 by default runs the frozen backbone once
over the unaugmented images and fits the head on the pooled features: one
forward pass instead of one per epoch, which on a 2-core CPU is the difference
between minutes and hours. `simple_cnn` trains in one stage from scratch.
Images are cropped to their lungs first, as inference crops them. With several
sources, each source's classes are balanced and the sources are weighted by the
square root of their size (`loss_weights`), so a small second source counts
without its few images being repeated tenfold. Every stage stops early on
the validation monitor and keeps its best epoch. After training, a temperature
and a decision threshold are fitted on validation (lungviz.training.calibration).

Run folder: `last.keras` (full model and optimizer, every epoch), `best.weights.h5`
(best epoch of the running stage), `state.json` (stage, epoch, best so far: what
`resume` continues from), `history.csv` (Keras CSVLogger), `train.log` (plain text)
and `head_features.npz` (the cached stage-1 features). The lungs' crop boxes are
cached beside the run folders (`<runs>/<task>/lung-boxes-*.json`), shared by runs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lungviz.errors import TrainingError
from lungviz.inference.explanations.graph import cam_resolution
from lungviz.models.architectures import (
    HEAD_LAYERS,
    POOL_LAYER,
    BuiltModel,
    build_model,
    get_architecture,
)
from lungviz.models.cards import INPUT_CROPS, ModelCard
from lungviz.models.outputs import apply_temperature
from lungviz.models.storage import load_compact, save_compact
from lungviz.preprocessing import gray_batch_to_input
from lungviz.tasks import get_task, task_problem
from lungviz.training import datasets
from lungviz.training.calibration import choose_threshold, fit_temperature
from lungviz.training.evaluation import raw_probabilities

MONITORS = {"val_auc": "max", "val_loss": "min"}
STATE_FILE = "state.json"
LAST_CHECKPOINT = "last.keras"
BEST_WEIGHTS = "best.weights.h5"
FEATURES_FILE = "head_features.npz"
HISTORY_FILE = "history.csv"
STORAGE_TOLERANCE = 0.01
"""Largest change in any class probability that compact storage may cause on validation images.

One percentage point: far inside every metric's bootstrap interval, and a fine-tuned
network's float16 weights already move it by 0.002-0.005 (float32 would double
weights/ for nothing). The card records the precision kept and the change measured."""
_IDENTITY_FIELDS = (
    "task",
    "architecture",
    "input_size",
    "data_dirs",
    "input_crop",
    "seed",
    "batch_size",
    "finetune_blocks",
    "precompute_features",
    "pretrained",
)
"""Config fields a resumed run must share with the run it continues."""

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything one training run depends on; recorded in the run's state and the model card."""

    task: str
    data_dirs: tuple[Path, ...]  # one data set per source, each <root>/<split>/<class>/*.jpg
    architecture: str
    run_dir: Path
    export_dir: Path | None = None  # where <name>.keras and <name>.json go (e.g. weights/<task>); default run_dir
    name: str | None = None  # model name; default the architecture
    input_size: tuple[int, int] = (224, 224)
    input_crop: str = "lungs"  # "lungs": every image cropped to its lungs' box, as the card tells inference
    lungs_weights: Path | None = None  # weights folder holding lungs/ (the X-ray segmenter); default ./weights
    batch_size: int = 32
    head_epochs: int = 30  # stage 1 of transfer models (cheap on precomputed features)
    head_lr: float = 1e-3
    epochs: int = 15  # stage 2 of transfer models, or the whole from-scratch run
    learning_rate: float | None = None  # for `epochs`; None: 1e-4 fine-tuning, 1e-3 from scratch
    finetune_blocks: int | str = 2  # top N backbone blocks to unfreeze in stage 2, or "all"
    monitor: str = "val_auc"
    patience: int = 4
    augment: bool = True
    precompute_features: bool = True
    pretrained: bool = True
    imagenet_weights: Path | None = None
    dropout: float = 0.2
    seed: int = 42
    resume: bool = False
    verbose: int = 1  # Keras: 0 silent, 1 progress bar, 2 one line per epoch
    command: str = ""  # the command line that started the run, for the model card

    def __post_init__(self) -> None:
        self.data_dirs, self.run_dir = tuple(Path(d) for d in self.data_dirs), Path(self.run_dir)
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        problems = [problem for problem in [task_problem(self.task)] if problem]
        if not self.data_dirs:
            problems.append("at least one data set is needed")
        if self.input_crop not in INPUT_CROPS:
            problems.append(f"input_crop must be one of {INPUT_CROPS}, not {self.input_crop!r}")
        if self.monitor not in MONITORS:
            problems.append(f"monitor must be one of {list(MONITORS)}, not {self.monitor!r}")
        if not (self.finetune_blocks == "all" or (isinstance(self.finetune_blocks, int) and self.finetune_blocks >= 0)):
            problems.append(f"finetune_blocks must be a non-negative integer or 'all', not {self.finetune_blocks!r}")
        if self.batch_size < 1 or self.head_epochs < 0 or self.epochs < 0 or self.patience < 1:
            problems.append("batch_size and patience must be positive, epoch counts non-negative")
        if problems:
            raise TrainingError("; ".join(problems))

    @property
    def model_name(self) -> str:
        return self.name or self.architecture.replace("_", "-")

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share, as they read back from state.json."""
        values = asdict(self)
        return json.loads(json.dumps({key: values[key] for key in _IDENTITY_FIELDS}, default=str))


@dataclass(frozen=True)
class Stage:
    """One fit: which weights train, for how long, how fast."""

    name: str
    epochs: int
    learning_rate: float
    description: str
    on_features: bool = False


@dataclass
class TrainResult:
    model_path: Path
    card_path: Path
    card: ModelCard
    run_dir: Path
    stages: list[dict[str, Any]] = field(default_factory=list)


def plan_stages(config: TrainConfig) -> list[Stage]:
    """The recipe for the config's architecture (stages with zero epochs are dropped)."""
    if not get_architecture(config.architecture).transfer:
        stages = [
            Stage("scratch", config.epochs, config.learning_rate or 1e-3, "all layers from random initialisation")
        ]
    else:
        blocks = config.finetune_blocks
        stages = [
            Stage(
                "head",
                config.head_epochs,
                config.head_lr,
                "new head on the frozen backbone",
                on_features=config.precompute_features,
            ),
            Stage(
                "finetune",
                config.epochs,
                config.learning_rate or 1e-4,
                f"head and the top {blocks} backbone blocks (batch normalisation frozen)",
            ),
        ]
    return [stage for stage in stages if stage.epochs > 0]


def loss_weights(split: datasets.SplitData) -> dict[str, dict[str, float]]:
    """Per source and class, the loss weight of one image (the weights average 1 over the split).

    Within a source every class contributes the same total weight; a source's
    share of the loss grows with the square root of its size.
    """
    sources = split.source_names()
    share = np.sqrt([np.sum(split.sources == source) for source in sources])
    share /= share.sum()
    weights: dict[str, dict[str, float]] = {}
    counts_by_source = split.counts_by_source()
    for source, source_share in zip(sources, share, strict=True):
        counts = counts_by_source[source]
        missing = [name for name, count in counts.items() if count == 0]
        if missing:
            raise TrainingError(f"every class needs training images; {source} has none of {missing}")
        weights[source] = {
            name: float(source_share * len(split) / (len(counts) * count)) for name, count in counts.items()
        }
    return weights


def image_weights(split: datasets.SplitData, weights: dict[str, dict[str, float]]) -> np.ndarray:
    """The loss weight of every image of `split`."""
    return np.array(
        [weights[source][split.classes[label]] for source, label in zip(split.sources, split.labels, strict=True)],
        dtype=np.float32,
    )


@keras.saving.register_keras_serializable(package="lungviz")
class PositiveClassAUC(keras.metrics.AUC):
    """ROC-AUC of P(classes[1]) from integer labels and softmax output: the early-stopping monitor.

    (Keras' AUC on one-hot two-class output would pool both columns, which is not the binary AUC.)
    """

    def update_state(self, y_true, y_pred, sample_weight=None):
        positive = keras.ops.cast(keras.ops.equal(keras.ops.reshape(y_true, (-1,)), 1), "float32")
        return super().update_state(positive, y_pred[:, 1], sample_weight=sample_weight)


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            PositiveClassAUC(num_thresholds=500, name="auc"),
        ],
    )


def _set_trainable(model: keras.Model, built: BuiltModel, stage: Stage, finetune_blocks: int | str) -> None:
    """Freeze what the stage keeps fixed; BatchNormalization inside a backbone never trains."""
    if built.backbone is None:
        return
    base = model.get_layer(built.backbone)
    if stage.name == "head":
        base.trainable = False
        return
    if finetune_blocks == "all":
        groups = built.blocks
    else:  # the stem (blocks[0]) only ever trains with "all"
        count = int(finetune_blocks)
        groups = built.blocks[1:][-count:] if count > 0 else []
    unfrozen = {name for group in groups for name in group}
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name in unfrozen and not isinstance(layer, keras.layers.BatchNormalization)


class _RunState(keras.callbacks.Callback):
    """Tracks the best epoch, saves its weights, stops early, times epochs and writes state.json.

    Runs after ModelCheckpoint and CSVLogger, so when state.json says "epoch k
    done" the checkpoint and the history on disk hold epoch k.
    """

    def __init__(self, run: _Run, stage: Stage, weights_of: keras.Model, patience: int) -> None:
        super().__init__()
        self.run, self.stage, self.weights_of, self.patience = run, stage, weights_of, patience
        self.mode = MONITORS[run.config.monitor]
        self.started = 0.0

    def _improved(self, value: float, loss: float) -> bool:
        """Better on the monitor; for a saturated AUC (often 1.0 on easy validation sets), lower loss breaks the tie."""
        best = self.run.state["best"]
        if best is None or (value > best if self.mode == "max" else value < best):
            return True
        return value == best and loss < self.run.state["best_loss"]

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        state, seconds = self.run.state, time.perf_counter() - self.started
        value, loss = float(logs[self.run.config.monitor]), float(logs["val_loss"])
        if self._improved(value, loss):
            state.update(best=value, best_loss=loss, best_epoch=epoch + 1)
            self.weights_of.save_weights(self.run.dir / BEST_WEIGHTS)
        state["epoch"] = epoch + 1
        state["epoch_seconds"].append(seconds)
        self.run.save_state()
        log.info(
            "stage %s epoch %d/%d: %s (%.1f s)%s",
            self.stage.name,
            epoch + 1,
            self.stage.epochs,
            ", ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())),
            seconds,
            " best" if state["best_epoch"] == epoch + 1 else "",
        )
        if epoch + 1 - state["best_epoch"] >= self.patience:
            log.info(
                "stage %s: no %s improvement for %d epochs, stopping",
                self.stage.name,
                self.run.config.monitor,
                self.patience,
            )
            self.model.stop_training = True


class _Run:
    """The run folder: state.json, checkpoints, logs."""

    def __init__(self, config: TrainConfig, stages: list[Stage]) -> None:
        self.config, self.dir = config, config.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        state_path = self.dir / STATE_FILE
        if state_path.exists() and not config.resume:
            raise TrainingError(f"{self.dir} already holds a training run; resume it or choose another run folder")
        if config.resume and state_path.exists():
            self.state = json.loads(state_path.read_text())
            if self.state["identity"] != config.identity():
                raise TrainingError(
                    f"cannot resume {self.dir}: it was started with {self.state['identity']}, not {config.identity()}"
                )
            self.state["resumed"] += 1
        else:
            for stale in (LAST_CHECKPOINT, BEST_WEIGHTS, FEATURES_FILE, HISTORY_FILE):
                (self.dir / stale).unlink(missing_ok=True)  # left by a run that died before its first epoch
            self.state = {"identity": config.identity(), "stage": 0, "resumed": 0, "finished": []}
            self.new_stage()
        self.state["plan"] = [asdict(stage) for stage in stages]

    def new_stage(self, carry_best: bool = False) -> None:
        """Reset per-stage progress; with carry_best the next stage must beat this one's best to count.

        Early stopping then spans stages: fine-tuning that never beats the frozen
        backbone's head on validation leaves the stage-1 weights in place.
        """
        best = {key: self.state.get(key) for key in ("best", "best_loss")} if carry_best else {}
        self.state.update(epoch=0, best=None, best_loss=None, best_epoch=0, epoch_seconds=[])
        self.state.update(best)

    def save_state(self) -> None:
        temporary = self.dir / (STATE_FILE + ".tmp")
        temporary.write_text(json.dumps(self.state, indent=2))
        temporary.replace(self.dir / STATE_FILE)


def _head_features(
    model: keras.Model, run: _Run, train: datasets.SplitData, val: datasets.SplitData, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features of the unaugmented train and val images, cached in the run folder."""
    cache = run.dir / FEATURES_FILE
    if cache.exists():
        stored = np.load(cache)
        return stored["train"], stored["val"]
    started = time.perf_counter()
    extractor = keras.Model(model.input, model.get_layer(POOL_LAYER).output)
    features = [
        extractor.predict(datasets.evaluation_dataset(split, batch_size), verbose=run.config.verbose)
        for split in (train, val)
    ]
    np.savez(cache, train=features[0], val=features[1])
    run.state["feature_seconds"] = time.perf_counter() - started
    log.info(
        "stage head: backbone features of %d images in %.1f s", len(train) + len(val), run.state["feature_seconds"]
    )
    return features[0], features[1]


def _fit_stage(
    model: keras.Model,
    built: BuiltModel,
    stage: Stage,
    run: _Run,
    train: datasets.SplitData,
    val: datasets.SplitData,
    train_weights: np.ndarray,
) -> None:
    config = run.config
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.CSVLogger(str(run.dir / HISTORY_FILE), append=True)]
    if stage.on_features:
        # A few seconds of work: restarted rather than resumed, so no per-epoch checkpoint.
        run.new_stage()
        train_x, val_x = _head_features(model, run, train, val, config.batch_size)
        fitted = keras.Sequential([keras.Input(train_x.shape[1:]), *(model.get_layer(n) for n in HEAD_LAYERS)])
        _compile(fitted, stage.learning_rate)
        data = {
            "x": train_x,
            "y": train.labels,
            "sample_weight": train_weights,
            "validation_data": (val_x, val.labels),
            "batch_size": config.batch_size,
            "shuffle": True,
        }
    else:
        fitted = model
        if run.state["epoch"] == 0 or model.optimizer is None:
            _set_trainable(model, built, stage, config.finetune_blocks)
            _compile(model, stage.learning_rate)
        if run.state["epoch"] == 0 and run.state["best"] is not None:
            model.save_weights(run.dir / BEST_WEIGHTS)  # the previous stage's best, kept unless beaten
        callbacks.insert(0, keras.callbacks.ModelCheckpoint(str(run.dir / LAST_CHECKPOINT)))
        data = {
            "x": datasets.training_dataset(
                train, config.batch_size, seed=config.seed, augment=config.augment, weights=train_weights
            ),
            "validation_data": datasets.evaluation_dataset(val, config.batch_size),
            "shuffle": False,
        }
    callbacks.append(_RunState(run, stage, fitted, config.patience))  # last: state.json commits the epoch
    log.info(
        "stage %s: %s, learning rate %g, epochs %d..%d",
        stage.name,
        stage.description,
        stage.learning_rate,
        run.state["epoch"] + 1,
        stage.epochs,
    )
    fitted.fit(
        **data,
        epochs=stage.epochs,
        initial_epoch=run.state["epoch"],
        callbacks=callbacks,
        verbose=config.verbose,
    )
    if run.state["best_epoch"] or not stage.on_features:
        fitted.load_weights(run.dir / BEST_WEIGHTS)
    if not run.state["best_epoch"]:
        log.info("stage %s: never beat the previous stage on %s; keeping its weights", stage.name, config.monitor)


def _stage_record(stage: Stage, state: dict[str, Any], monitor: str) -> dict[str, Any]:
    seconds = state["epoch_seconds"]
    record = {
        "name": stage.name,
        "description": stage.description,
        "learning_rate": stage.learning_rate,
        "max_epochs": stage.epochs,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        f"best_{monitor}": state["best"],
        "features_precomputed": stage.on_features,
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
    }
    if stage.on_features:
        record["feature_extraction_seconds"] = state.get("feature_seconds")
    return record


def _starting_model(config: TrainConfig, run: _Run, num_classes: int) -> tuple[keras.Model, BuiltModel]:
    """A fresh model, or the last checkpoint when resuming (then the fresh build only supplies layer names)."""
    checkpoint = run.dir / LAST_CHECKPOINT
    resuming = config.resume and checkpoint.exists()
    built = build_model(
        config.architecture,
        num_classes,
        config.input_size,
        dropout=config.dropout,
        pretrained=config.pretrained and not resuming,
        imagenet_weights=config.imagenet_weights,
    )
    if resuming:
        log.info("resuming from %s at stage %d, epoch %d", checkpoint, run.state["stage"], run.state["epoch"])
        return keras.models.load_model(checkpoint), built
    return built.model, built


HISTORY_COLUMNS = ("loss", "auc", "val_loss", "val_auc")


def stage_histories(history_csv: Path, stages: list[dict[str, Any]]) -> list[dict[str, list[float]]]:
    """Per stage, the per-epoch training and validation loss and AUC from the run's history.csv.

    CSVLogger appends every stage's epochs to one file (epoch numbers restart per
    stage), so the rows are dealt out by each finished stage's epoch count.
    """
    import csv

    if not history_csv.is_file():
        return [{} for _ in stages]
    with history_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    histories, start = [], 0
    for stage in stages:
        block = rows[start : start + int(stage["epochs_run"])]
        start += int(stage["epochs_run"])
        histories.append({key: [round(float(row[key]), 5) for row in block] for key in HISTORY_COLUMNS})
    return histories


def _split_sizes(config: TrainConfig, classes: tuple[str, ...]) -> dict[str, dict[str, dict[str, int]]]:
    """Images per class of every split of every source: {source: {split: {class: n}}}."""
    sizes: dict[str, dict[str, dict[str, int]]] = {}
    for root in config.data_dirs:
        sizes[root.name] = {}
        for split in datasets.SPLITS:
            if (root / split).is_dir():
                _, labels = datasets.list_split(root, split, classes)
                sizes[root.name][split] = {name: int(np.sum(labels == i)) for i, name in enumerate(classes)}
    return sizes


def _export(
    config: TrainConfig,
    trained: keras.Model,
    built: BuiltModel,
    classes: tuple[str, ...],
    val: datasets.SplitData,
    training_record: dict[str, Any],
) -> tuple[Path, Path, ModelCard]:
    """Save an inference-only copy of the model, fit calibration and threshold, write the card."""
    export_dir = Path(config.export_dir or config.run_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    model_path, card_path = export_dir / f"{config.model_name}.keras", export_dir / f"{config.model_name}.json"
    fresh = build_model(
        config.architecture, len(classes), config.input_size, pretrained=False, dropout=config.dropout
    ).model  # same graph, no optimizer state in the file
    fresh.set_weights(trained.get_weights())
    stored = save_compact(fresh, model_path, gray_batch_to_input(val.images[:16]), tolerance=STORAGE_TOLERANCE)
    training_record["weights_dtype"] = stored.dtype
    training_record["weights_max_output_change"] = stored.max_output_change
    training_record["weights_tolerance"] = STORAGE_TOLERANCE
    training_record["weights_tried"] = stored.tried
    # Calibrate the model as the file holds it (compact weights), not the in-memory one.
    shipped = load_compact(model_path)

    probabilities = raw_probabilities(shipped, val.images, "softmax")
    temperature = fit_temperature(probabilities, val.labels)
    calibrated = apply_temperature(probabilities, temperature)
    point = choose_threshold(calibrated[:, 1], val.labels == 1)
    training_record["operating_point_on_val"] = {
        "sensitivity": point.sensitivity,
        "specificity": point.specificity,
        "youden_j": point.youden_j,
    }
    card = ModelCard(
        name=config.model_name,
        task=config.task,
        architecture=config.architecture,
        classes=list(classes),
        positive_class=classes[1],
        input_size=list(config.input_size),
        head="softmax",
        cam_layer=built.cam_layer,
        input_crop=config.input_crop,
        family=get_architecture(config.architecture).family,
        parameters=int(fresh.count_params()),
        cam_resolution=cam_resolution(fresh, built.cam_layer),
        threshold=point.threshold,
        threshold_rule=point.rule,
        calibration={"method": "temperature", "temperature": temperature, "fitted_on": "val"},
        training=training_record,
        metrics={},
        file=model_path.name,
        file_size_bytes=model_path.stat().st_size,
        limitations=list(get_task(config.task).limitations),
    )
    card.save(card_path)
    card.card_path = card_path
    log.info(
        "saved %s (T = %.3f, threshold %.3f by %s) and %s",
        model_path,
        temperature,
        point.threshold,
        point.rule,
        card_path,
    )
    return model_path, card_path, card


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) the config's recipe and export the model with its card."""
    stages = plan_stages(config)
    if not stages:
        raise TrainingError("nothing to train: every stage has zero epochs")
    run = _Run(config, stages)
    handler = logging.FileHandler(run.dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _train(config, stages, run)
    finally:
        log.removeHandler(handler)
        handler.close()


def _train(config: TrainConfig, stages: list[Stage], run: _Run) -> TrainResult:
    keras.utils.set_random_seed(config.seed)
    classes = datasets.dataset_classes(config.data_dirs[0], config.task)
    cropper = datasets.lung_cropper(config.task, config.input_crop, config.run_dir.parent, config.lungs_weights)
    train_split = datasets.load_split(config.data_dirs, "train", classes, config.input_size, cropper)
    val_split = datasets.load_split(config.data_dirs, "val", classes, config.input_size, cropper)
    weights = loss_weights(train_split)
    log.info(
        "%s on %s: train %s, val %s, loss weights %s, lungs found in %s of %d training images",
        config.architecture,
        ", ".join(str(d) for d in config.data_dirs),
        train_split.counts_by_source(),
        val_split.counts_by_source(),
        weights,
        "all" if train_split.lungs_found is None else int(train_split.lungs_found.sum()),
        len(train_split),
    )
    model, built = _starting_model(config, run, len(classes))
    run.state.setdefault("initial_weights", built.weights_source)  # a resumed build has random weights
    for index in range(run.state["stage"], len(stages)):
        stage = stages[index]
        _fit_stage(model, built, stage, run, train_split, val_split, image_weights(train_split, weights))
        run.state["finished"].append(_stage_record(stage, run.state, config.monitor))
        model.save(run.dir / LAST_CHECKPOINT)
        run.state["stage"] = index + 1
        run.new_stage(carry_best=True)
        run.save_state()

    import tensorflow as tf

    for stage, history in zip(
        run.state["finished"], stage_histories(run.dir / HISTORY_FILE, run.state["finished"]), strict=True
    ):
        stage["history"] = history
    record = {
        "data_dirs": [root.name for root in config.data_dirs],
        "input_crop": config.input_crop,
        "lungs_found": None
        if config.input_crop == "none"
        else {split.name: split.lungs_found_counts() for split in (train_split, val_split)},
        "split_sizes": _split_sizes(config, classes),
        "input_size": list(config.input_size),
        "recipe": {
            "stages": run.state["finished"],
            "batch_size": config.batch_size,
            "optimizer": "Adam",
            "loss": "sparse categorical cross-entropy",
            "loss_weights": weights,
            "augmentation": dict(datasets.AUGMENTATION) if config.augment else None,
            "seed": config.seed,
            "monitor": config.monitor,
            "patience": config.patience,
            "dropout": config.dropout,
            "finetune_blocks": config.finetune_blocks if get_architecture(config.architecture).transfer else None,
            "initial_weights": run.state["initial_weights"],
        },
        "resumed": run.state["resumed"],
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}",
        "command": config.command,
    }
    model_path, card_path, card = _export(config, model, built, classes, val_split, record)
    return TrainResult(model_path, card_path, card, run.dir, run.state["finished"])
