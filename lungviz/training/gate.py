"""Fitting and measuring the modality gate (`lungviz.inference.modality` applies it).

The gate is fitted on several sources per modality (pediatric and adult X-rays,
cropped JPEG CT slices and full-field DICOM CT renderings), each image also seen
through random re-framings (zoom in and out with film borders and markers,
windows, gamma, blur, JPEG re-encoding), because a chest image from an unseen
hospital differs from the training ones mostly in framing and intensity. Its
third class, "other", is fitted on non-chest pictures by family (photos, textures,
documents, micrographs, faces, retinas, head CT, MR, ultrasound, a bone scan),
re-framed the same way.

Two protocols measure what matters for uploads, never on an image that was fitted:
`leave_one_source_out` fits without one chest source and routes its images;
`leave_one_family_out` fits "other" without one non-chest family and asks how
often that family is called other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lungviz.errors import DatasetError
from lungviz.inference.modality import (
    CARD_FILE,
    CLASSES,
    EMBEDDING_FILE,
    OTHER,
    STATS_FILE,
    ModalityGate,
    embed_images,
)
from lungviz.models.backbones.efficientnet_lite import build_efficientnet_lite
from lungviz.models.storage import save_compact
from lungviz.tasks import MODALITIES
from lungviz.training import datasets

SPLITS = ("train", "val", "test")
AUGMENTATION_VERSION = "2"
"""Part of the feature cache key: bump it when `augment` changes."""
AUGMENTATION = (
    "per image: random crop (60-100% of the area, aspect 0.8-1.25); with p=0.5 zoom out onto a 1.05-1.6x canvas "
    "filled black, white, grey or edge-replicated, with p=0.5 a bright corner marker or letter; rotation up to "
    "8 degrees (p=0.3); a random intensity window (clip 0-15% at each end) and gamma exp(N(0, 0.35)); blur or "
    "noise (p=0.3); downscale to 160-512 px and JPEG re-encoding at quality 30-95 (p=0.6)"
)


_NEED_TWO_SOURCES = "leave-one-source-out needs two sources of at least one modality (e.g. --xray A --xray B)"


class GateDataError(DatasetError):
    """A gate source that cannot be read or a leave-one-source-out that cannot be run as asked."""


@dataclass(frozen=True)
class GateSource:
    """One labelled collection of chest images of one modality.

    A folder with train/val/test class folders, or DICOM files (one file, or a
    folder of .dcm): DICOM renderings have no splits, so they are fitted on
    whole and only tested when their source is held out.
    """

    modality: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name

    @property
    def is_dicom(self) -> bool:
        return self.path.is_file() or not (self.path / "train").is_dir()

    def check(self) -> None:
        if self.modality not in MODALITIES:
            raise GateDataError(f"unknown modality {self.modality!r}; the gate knows {', '.join(MODALITIES)}")
        if not self.path.exists():
            raise GateDataError(f"{self.modality} source {self.path} does not exist")
        if self.is_dicom and not self._dicom_files():
            raise GateDataError(f"{self.path} has neither train/val/test class folders nor .dcm files")

    def _dicom_files(self) -> list[Path]:
        return [self.path] if self.path.is_file() else sorted(self.path.glob("*.dcm"))

    def images(self, split: str, limit: int | None, seed: int) -> list[np.ndarray]:
        """[0, 1] grayscale images of one split (a seeded sample of at most `limit`), longer side <= 512 px."""
        if self.is_dicom:
            return dicom_renderings(self._dicom_files()) if split == "train" else []
        paths, _ = datasets.list_split(self.path, split, datasets.dataset_classes(self.path))
        if limit is not None and len(paths) > limit:
            paths = [paths[i] for i in np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]
        return [_read_gray(path) for path in paths]


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise GateDataError(f"cannot read image {path}")
    return _limit_size(image.astype(np.float32) / 255.0)


def _limit_size(pixels: np.ndarray, longest: int = 512) -> np.ndarray:
    scale = longest / max(pixels.shape)
    if scale >= 1:
        return pixels
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def dicom_renderings(paths: Sequence[Path]) -> list[np.ndarray]:
    """Each DICOM file as an upload shows it: its own window, then the lung, mediastinum and bone presets for CT."""
    from lungviz.inference.images import CT_WINDOWS, load_image

    renderings = []
    for path in paths:
        data = Path(path).read_bytes()
        first = load_image(data, Path(path).name)
        renderings.append(_limit_size(first.pixels))
        if first.modality_hint == "ct":
            renderings += [_limit_size(load_image(data, Path(path).name, window=w).pixels) for w in CT_WINDOWS]
    return renderings


def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random re-framing of a [0, 1] grayscale image: see AUGMENTATION (recorded on the card)."""
    image: np.ndarray = np.asarray(pixels, np.float32)
    height, width = image.shape
    area, aspect = rng.uniform(0.6, 1.0), np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    crop_h = min(height, max(8, round(height * np.sqrt(area / aspect))))
    crop_w = min(width, max(8, round(width * np.sqrt(area * aspect))))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    image = image[top : top + crop_h, left : left + crop_w]
    if rng.random() < 0.5:
        image = _zoom_out(image, rng)
    if rng.random() < 0.3:
        centre = (image.shape[1] / 2, image.shape[0] / 2)
        turn = cv2.getRotationMatrix2D(centre, rng.uniform(-8, 8), 1.0)
        image = cv2.warpAffine(image, turn, image.shape[::-1], borderMode=cv2.BORDER_REPLICATE)
    low, high = np.quantile(image, [rng.uniform(0, 0.15), 1 - rng.uniform(0, 0.15)])
    image = np.clip((image - low) / max(high - low, 1e-3), 0, 1) ** np.exp(rng.normal(0, 0.35))
    if rng.random() < 0.3:
        if rng.random() < 0.5:
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
        else:
            image = np.clip(image + rng.normal(0, rng.uniform(0.01, 0.05), image.shape), 0, 1)
    if rng.random() < 0.6:
        image = _jpeg(_limit_size(image.astype(np.float32), int(rng.integers(160, 513))), int(rng.integers(30, 96)))
    return np.clip(image, 0, 1).astype(np.float32)


def _zoom_out(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image on a larger canvas: the borders, collimation and markers of a wide film or a full-field slice."""
    factor = rng.uniform(1.05, 1.6)
    height, width = image.shape
    pad_h, pad_w = round(height * (factor - 1)), round(width * (factor - 1))
    top, left = int(rng.integers(0, pad_h + 1)), int(rng.integers(0, pad_w + 1))
    fill = rng.choice(["black", "white", "grey", "edge"])
    mode = cv2.BORDER_REPLICATE if fill == "edge" else cv2.BORDER_CONSTANT
    value = {"black": 0.0, "white": 1.0, "grey": float(rng.uniform(0.2, 0.8)), "edge": 0.0}[fill]
    canvas = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, mode, value=value)
    if rng.random() < 0.5:
        size = max(4, round(min(canvas.shape) * rng.uniform(0.04, 0.1)))
        x, y = int(rng.integers(0, canvas.shape[1] - size)), int(rng.integers(0, canvas.shape[0] - size))
        if rng.random() < 0.5:
            canvas[y : y + size, x : x + size] = 1.0
        else:
            letters = np.zeros(canvas.shape, np.uint8)  # OpenCV draws text on 8-bit images only
            cv2.putText(letters, str(rng.choice(["L", "R", "AP", "PA"])), (x, y + size), 0, size / 25, 255, 2)
            canvas[letters > 0] = 1.0
    return canvas


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    _, encoded = cv2.imencode(".jpg", np.rint(image * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return np.asarray(cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE), np.float32) / 255.0


@dataclass
class SourceFeatures:
    """Embeddings of one source: `fit` (plain + augmented training images), `val` (plain + augmented),
    `test` (its own test split, plain) and `test_augmented` (the same re-framed)."""

    modality: str
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_augmented: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    def unseen(self) -> np.ndarray:
        """Every plain image of the source, for when it is held out: none of them shaped the gate."""
        plain = self.counts.get("train_plain", len(self.fit))
        return _stack([self.fit[:plain], self.val[: self.counts.get("val_plain", len(self.val))], self.test])

    def unseen_reframed(self) -> np.ndarray:
        """Re-framed images of the held-out source: its test split's, or (DICOM: no test split) its training ones."""
        return self.test_augmented if len(self.test_augmented) else self.fit[self.counts.get("train_plain", 0) :]


def _cached_arrays(
    cache: Path | None, prefix: str, key: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """`compute()`'s arrays, kept as .npz in `cache` under a name hashed from `key` (everything that shapes them)."""
    if cache is None:
        return compute()
    cached = cache / f"{prefix}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if cached.is_file():
        with np.load(cached) as stored:
            return {name: stored[name] for name in stored.files}
    arrays: dict[str, Any] = compute()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **arrays)
    return arrays


def embed_source(
    embedding: Callable[[np.ndarray], Any],
    source: GateSource,
    *,
    per_source: int = 600,
    copies: int = 2,
    seed: int = 0,
    cache: Path | None = None,
) -> SourceFeatures:
    """Embed a source's splits with `copies` augmented versions of each training image (one per
    validation and test image); cached as .npz in `cache`, keyed by everything that shapes them."""
    key = f"{source.modality}|{source.path.resolve()}|{per_source}|{copies}|{seed}|{AUGMENTATION_VERSION}"

    def compute() -> dict[str, np.ndarray]:
        arrays = {}
        for split, split_copies in zip(SPLITS, (copies, 1, 1), strict=True):
            images = source.images(split, per_source if split == "train" else None, seed)
            rng = np.random.default_rng([seed, SPLITS.index(split)])
            varied = [augment(image, rng) for _ in range(split_copies) for image in images]
            arrays[f"{split}_plain"] = embed_images(embedding, images)
            arrays[f"{split}_augmented"] = embed_images(embedding, varied)
        return arrays

    arrays = _cached_arrays(cache, f"gate-{source.name}", key, compute)
    return SourceFeatures(
        source.modality,
        fit=np.concatenate([arrays["train_plain"], arrays["train_augmented"]]),
        val=np.concatenate([arrays["val_plain"], arrays["val_augmented"]]),
        test=arrays["test_plain"],
        test_augmented=arrays["test_augmented"],
        counts={name: len(values) for name, values in arrays.items()},
    )


def fit_gate(embedding: Callable[[np.ndarray], Any] | None, features_by_class: dict[str, np.ndarray]) -> ModalityGate:
    """Linear discriminant over CLASSES: equal priors (uploads are not drawn like the training pool) and a
    Ledoit-Wolf shrunk shared covariance (1,280 features, a few thousand images), so nothing is tuned."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    for name in CLASSES:
        if len(features_by_class.get(name, ())) < 2:
            raise GateDataError(f"the gate needs training images of every class; {name} has none")
    features = np.concatenate([features_by_class[c] for c in CLASSES]).astype(np.float64)
    labels = np.concatenate([np.full(len(features_by_class[c]), i) for i, c in enumerate(CLASSES)])
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto", priors=np.full(len(CLASSES), 1 / len(CLASSES)))
    lda.fit(features, labels)
    return ModalityGate(
        embedding,  # type: ignore[arg-type]  # None only where the gate judges features alone
        np.asarray(lda.coef_, np.float64).T,
        np.asarray(lda.intercept_, np.float64),
    )


def fit_on_sources(
    embedding: Callable[[np.ndarray], Any] | None,
    features: dict[str, SourceFeatures],
    other: dict[str, np.ndarray],
) -> ModalityGate:
    """The gate fitted on every given chest source (each modality pools its sources' fit features)
    and on every given non-chest family's fit features as "other"."""
    by_class = {m: _stack([f.fit for f in features.values() if f.modality == m]) for m in MODALITIES}
    return fit_gate(embedding, {**by_class, "other": _stack(list(other.values()))})


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of the non-empty arrays (a DICOM source has no validation rows, and no known width)."""
    filled = [a for a in arrays if len(a)]
    return np.concatenate(filled) if filled else np.zeros((0, 0))


def routing_rates(gate: ModalityGate, features: np.ndarray, modality: str | None) -> dict[str, Any]:
    """Shares routed to `modality`, called other, and sent to the wrong modality (None: non-chest images)."""
    if not len(features):
        return {"images": 0, "called_other": None} | (
            {} if modality is None else {"routed": None, "wrong_modality": None}
        )
    verdicts = gate.predict(np.asarray(features, np.float64))
    other = verdicts == OTHER
    if modality is None:
        return {"images": len(features), "called_other": float(np.mean(other))}
    right = verdicts == CLASSES.index(modality)
    return {
        "images": len(features),
        "routed": float(np.mean(right)),
        "called_other": float(np.mean(other)),
        "wrong_modality": float(np.mean(~right & ~other)),
    }


def leave_one_source_out(features: dict[str, SourceFeatures], other: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """For each source whose modality keeps another source: fit without it (with every non-chest family as
    "other"), then route all its plain images and its re-framed test images."""
    rows = []
    for held_out, own in features.items():
        rest = {name: f for name, f in features.items() if name != held_out}
        if not any(f.modality == own.modality for f in rest.values()):
            continue
        gate = fit_on_sources(None, rest, other)
        rows.append(
            {
                "held_out": held_out,
                "modality": own.modality,
                "fitted_on": sorted(rest),
                "unseen": routing_rates(gate, own.unseen(), own.modality),
                "unseen_reframed": routing_rates(gate, own.unseen_reframed(), own.modality),
            }
        )
    if not rows:
        raise GateDataError(_NEED_TWO_SOURCES)
    return rows


def leave_one_family_out(
    features: dict[str, SourceFeatures], other: dict[str, np.ndarray], tested: dict[str, np.ndarray]
) -> dict[str, Any]:
    """For each non-chest family: fit on every chest source and every other family, then the share of the
    family's `tested` (plain) images called other; none of its images, nor its extras, were fitted."""
    rates = {}
    for family, images in tested.items():
        gate = fit_on_sources(None, features, {name: f for name, f in other.items() if name != family})
        rates[family] = routing_rates(gate, images, None)
    return {"non_chest": rates, "non_chest_summary": summarise_non_chest(rates)}


def build_embedding() -> Any:
    """ImageNet EfficientNet-Lite0 with global average pooling: the gate's feature extractor."""
    import keras

    backbone = build_efficientnet_lite("efficientnet_lite0", (224, 224, 3), include_top=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="embedding")(backbone.output)
    return keras.Model(backbone.input, pooled, name="modality_embedding")


def compiled(model: Any) -> Callable[[np.ndarray], Any]:
    """The embedding as one traced graph: thousands of eager calls of ~100 layers cost several times more."""
    import tensorflow as tf

    return tf.function(lambda batch: model(batch, training=False), input_signature=[tf.TensorSpec((None, 224, 224, 3))])


def _to_gray(image: np.ndarray) -> np.ndarray:
    import skimage.color

    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = skimage.color.rgb2gray(image[..., :3] / (255.0 if image.max() > 1 else 1.0))
    span = image.max() - image.min()
    return ((image - image.min()) / (span if span else 1.0)).astype(np.float32)


NATURAL_FAMILIES = {
    "photos": ["astronaut", "camera", "cat", "coffee", "horse", "rocket", "stereo_motorcycle", "clock", "coins"],
    "textures": ["brick", "grass", "gravel"],
    "documents_and_graphics": ["page", "text", "logo", "checkerboard", "colorwheel", "binary_blobs"],
    "science": ["moon", "hubble_deep_field", "cell", "immunohistochemistry", "shepp_logan_phantom"],
}
"""scikit-image's bundled pictures (no download), grouped into families that are held out together."""

OTHER_BODY_PARTS = {
    "head_ct": ["693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"],
    "mr": ["MR_small.dcm", "examples_overlay.dcm"],
    "ultrasound": ["examples_jpeg2k.dcm", "examples_rgb_color.dcm", "examples_ybr_color.dcm"],
    "nuclear_whole_body": ["JPEG2000.dcm"],
}
"""pydicom's bundled test images that show another body part or modality, rendered the way an upload is."""
OTHER_BODY_PART_FAMILIES = (*OTHER_BODY_PARTS, "retina")
"""Families that are medical images of something else; the rest are natural pictures (the two targets differ)."""


def summarise_non_chest(rates: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pooled share called other for natural pictures and for other body parts / modalities."""
    groups = {
        "natural": [f for f in rates if f not in OTHER_BODY_PART_FAMILIES],
        "other_body_parts": [f for f in rates if f in OTHER_BODY_PART_FAMILIES],
    }
    summary = {}
    for group, families in groups.items():
        images = sum(rates[f]["images"] for f in families)
        other = sum(rates[f]["images"] * rates[f]["called_other"] for f in families if rates[f]["images"])
        summary[group] = {"images": images, "called_other": other / images if images else None}
    return summary


def natural_images() -> dict[str, np.ndarray]:
    """Images that are not chest X-rays or CT slices, as [0, 1] grayscale: scikit-image's bundled
    photos, documents, micrographs and a head phantom, plus scikit-learn's two photos (no download)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = {}
    for family in NATURAL_FAMILIES.values():
        for name in family:
            picture = (
                skimage.data.stereo_motorcycle()[0] if name == "stereo_motorcycle" else getattr(skimage.data, name)()
            )
            images[name] = _to_gray(picture)
    for name, picture in zip(("china", "flower"), load_sample_images().images, strict=True):
        images[name] = _to_gray(picture)
    return images


def non_chest_images() -> dict[str, dict[str, np.ndarray]]:
    """Every non-chest picture at hand, by family: scikit-image photos etc., faces, retinas, and pydicom's
    head CT, MR, ultrasound and nuclear-medicine images (other body parts and modalities)."""
    import pydicom.data
    import skimage.data

    natural = natural_images()
    families = {family: {n: natural[n] for n in names} for family, names in NATURAL_FAMILIES.items()}
    families["photos"].update(china=natural["china"], flower=natural["flower"])
    faces = skimage.data.lfw_subset()
    families["faces"] = {f"face_{i}": _to_gray(faces[i]) for i in range(0, len(faces), 10)}
    families["retina"] = {n: _to_gray(getattr(skimage.data, n)()) for n in ("retina", "microaneurysms")}
    for family, files in OTHER_BODY_PARTS.items():
        families[family] = {}
        for file in files:
            for index, pixels in enumerate(dicom_renderings([Path(str(pydicom.data.get_testdata_file(file)))])):
                families[family][f"{file}#{index}"] = pixels
    return families


OTHER_COPIES = 120
"""Re-framed copies drawn per non-chest family for fitting (at least 4 per image): small families weigh alike."""
OTHER_POOL_VERSION = "1"
"""Part of the non-chest feature cache key: bump it when `other_pool_images` changes."""


def other_pool_images() -> dict[str, dict[str, np.ndarray]]:
    """What "other" is fitted on, by family: every picture of `non_chest_images` plus a few more of the
    same family (scikit-image's cat and right stereo view, all 200 of its face-set crops)."""
    import skimage.data

    pool = non_chest_images()
    pool["photos"].update(
        chelsea=_to_gray(skimage.data.chelsea()), motorcycle_right=_to_gray(skimage.data.stereo_motorcycle()[1])
    )
    faces = skimage.data.lfw_subset()
    pool["faces"] = {f"face_{i}": _to_gray(face) for i, face in enumerate(faces)}
    return pool


@dataclass
class OtherFeatures:
    """Embeddings of the non-chest families: `fit` (the pool, plain + re-framed) and `tested` (the plain
    `non_chest_images`, scored only when their family is held out)."""

    fit: dict[str, np.ndarray]
    tested: dict[str, np.ndarray]


def embed_other(embedding: Callable[[np.ndarray], Any], *, seed: int = 0, cache: Path | None = None) -> OtherFeatures:
    """Embed the non-chest pool with OTHER_COPIES re-framings per family; cached like `embed_source`."""
    key = f"other|{OTHER_COPIES}|{seed}|{AUGMENTATION_VERSION}|{OTHER_POOL_VERSION}"

    def compute() -> dict[str, np.ndarray]:
        tested = non_chest_images()
        arrays = {}
        for index, (family, named) in enumerate(other_pool_images().items()):
            images = list(named.values())
            rng = np.random.default_rng([seed, len(SPLITS), index])
            copies = max(4, -(-OTHER_COPIES // len(images)))
            varied = [augment(image, rng) for _ in range(copies) for image in images]
            arrays[f"{family}|fit"] = np.concatenate([embed_images(embedding, images), embed_images(embedding, varied)])
            arrays[f"{family}|tested"] = embed_images(embedding, list(tested[family].values()))
        return arrays

    arrays = _cached_arrays(cache, "gate-other", key, compute)
    families = [name.split("|")[0] for name in arrays if name.endswith("|fit")]
    return OtherFeatures({f: arrays[f"{f}|fit"] for f in families}, {f: arrays[f"{f}|tested"] for f in families})


def bundled_dicom_ct() -> Path:
    """pydicom's CT_small.dcm: a real full-field axial chest CT slice, the only DICOM chest CT at hand."""
    import pydicom.data

    return Path(str(pydicom.data.get_testdata_file("CT_small.dcm")))


def gather_features(
    embedding: Callable[[np.ndarray], Any], sources: Sequence[GateSource], **options: Any
) -> dict[str, SourceFeatures]:
    """Features of every source by name (names must differ: they label the evaluation)."""
    for source in sources:
        source.check()
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise GateDataError(f"gate sources need distinct folder names, got {names}")
    return {source.name: embed_source(embedding, source, **options) for source in sources}


def evaluate_gate(gate: ModalityGate, sources: Sequence[GateSource], *, seed: int = 0) -> dict[str, Any]:
    """The shipped gate, with its own embedding, on each source's test split (plain and re-framed, the
    same re-framings as fitting draws). DICOM sources have no test split; non-chest pictures were all
    fitted on, so `leave_one_family_out` measures them instead."""
    report: dict[str, Any] = {}
    for source in sources:
        source.check()
        images = source.images("test", None, seed)
        if not images:
            continue
        rng = np.random.default_rng([seed, SPLITS.index("test")])
        report[source.name] = {
            "modality": source.modality,
            "test": routing_rates(gate, gate.embed(images), source.modality),
            "test_reframed": routing_rates(gate, gate.embed([augment(i, rng) for i in images]), source.modality),
        }
    return report


def evaluate_held_out(sources: Sequence[GateSource], *, cache: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """`leave_one_source_out` and `leave_one_family_out` on freshly embedded images (the float32
    embedding the gate is fitted with)."""
    modalities = [source.modality for source in sources]
    if all(modalities.count(m) < 2 for m in MODALITIES):
        raise GateDataError(_NEED_TWO_SOURCES)
    embedding = compiled(build_embedding())
    features = gather_features(embedding, sources, seed=seed, cache=cache)
    other = embed_other(embedding, seed=seed, cache=cache)
    return {
        "leave_one_source_out": leave_one_source_out(features, other.fit),
        "leave_one_family_out": leave_one_family_out(features, other.fit, other.tested),
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def held_out_table(report: dict[str, Any]) -> str:
    """One line per held-out chest source (how its images are routed), then per held-out non-chest family."""
    lines = [
        "held-out source             modality  images  routed   other  wrong | re-framed: images  routed   other",
    ]
    for row in report["leave_one_source_out"]:
        plain, reframed = row["unseen"], row["unseen_reframed"]
        lines.append(
            f"{row['held_out']:<27} {row['modality']:<8} {plain['images']:>7} {_percent(plain['routed']):>7}"
            f" {_percent(plain['called_other']):>7} {_percent(plain['wrong_modality']):>6} |"
            f" {reframed['images']:>17} {_percent(reframed['routed']):>7} {_percent(reframed['called_other']):>7}"
        )
    families = report["leave_one_family_out"]
    lines += ["", "held-out non-chest family called other:"]
    for family, rates in {**families["non_chest"], **families["non_chest_summary"]}.items():
        lines.append(f"  {family:<25} ({rates['images']:>3} images) {_percent(rates['called_other']):>8}")
    return "\n".join(lines)


def evaluation_table(report: dict[str, Any]) -> str:
    """The shipped gate's rates per source test split."""
    lines = ["source test split           modality  images  routed   other  wrong | re-framed routed"]
    for name, entry in report.items():
        test, reframed = entry["test"], entry["test_reframed"]
        lines.append(
            f"{name:<27} {entry['modality']:<8} {test['images']:>7} {_percent(test['routed']):>7}"
            f" {_percent(test['called_other']):>7} {_percent(test['wrong_modality']):>6} |"
            f" {_percent(reframed['routed']):>16}"
        )
    return "\n".join(lines)


METHOD = (
    "EfficientNet-Lite0 ImageNet features; linear discriminant (equal priors, Ledoit-Wolf shrunk shared "
    "covariance) over xray, ct and other, other fitted on non-chest pictures by family; "
    "out-of-distribution score = P(other) / P(likelier chest modality)"
)


def train_gate(
    sources: Sequence[GateSource], out_dir: Path, *, cache: Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Fit the gate on every chest source and every non-chest family (with augmentation) and save it."""
    embedding = build_embedding()
    features = gather_features(compiled(embedding), sources, seed=seed, cache=cache)
    other = embed_other(compiled(embedding), seed=seed, cache=cache)
    gate = fit_on_sources(embedding, features, other.fit)
    card = {
        "method": METHOD,
        "sources": {
            name: {"modality": f.modality, "path": str(s.path.name), **f.counts}
            for (name, f), s in zip(features.items(), sources, strict=True)
        },
        "other": {family: len(f) for family, f in other.fit.items()},
        "augmentation": AUGMENTATION,
        "threshold_rule": "none tuned: the likeliest class wins (score > 1 means other); nothing was chosen on "
        "test images or held-out families",
    }
    save_gate(gate, out_dir, card)
    return card


def save_gate(gate: ModalityGate, folder: Path, card: dict[str, Any]) -> None:
    """Write the embedding (int8 or float16 where its features stay within tolerance), the classifier and the card."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = np.random.default_rng(0).uniform(0, 255, (4, 224, 224, 3)).astype(np.float32)
    stored = save_compact(gate.embedding, folder / EMBEDDING_FILE, probe, tolerance=0.1)  # features lie in [0, 6]
    card["weights_dtype"], card["weights_max_feature_change"] = stored.dtype, stored.max_output_change
    np.savez(folder / STATS_FILE, weights=gate.weights, bias=gate.bias)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
