"""Fitting the gate on several sources, leave-one-source-out and -family-out, augmentation and the gate CLI."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from lungviz.cli import USAGE_ERROR, main
from lungviz.tasks import MODALITIES
from lungviz.training import gate as gate_fitting
from lungviz.training.gate import (
    GateDataError,
    GateSource,
    SourceFeatures,
    augment,
    dicom_renderings,
    embed_other,
    embed_source,
    fit_on_sources,
    leave_one_family_out,
    leave_one_source_out,
    routing_rates,
)

DIMS = 24
MODALITY_CENTRE = {"xray": np.r_[np.zeros(DIMS)], "ct": np.r_[np.full(4, 6.0), np.zeros(DIMS - 4)]}


def _source(rng, modality, offset, spread=1.0, n=300):
    """A source: its modality's cluster shifted by a source offset (hospital, framing), with noise."""
    centre = MODALITY_CENTRE[modality] + offset

    def draw(count):
        return centre + rng.normal(0, spread, (count, DIMS))

    test = draw(n // 2)
    return SourceFeatures(modality, draw(n), draw(n // 2), test, test + rng.normal(0, 0.3, test.shape))


def _direction(*dims, length=8.0):
    vector = np.zeros(DIMS)
    vector[list(dims)] = length
    return vector


@pytest.fixture
def sources():
    """Two X-ray and two CT sources whose offsets lie inside each modality's spread."""
    rng = np.random.default_rng(0)
    shift = _direction(8, length=1.5)
    return {
        "pediatric": _source(rng, "xray", shift),
        "adult": _source(rng, "xray", -shift),
        "cropped_ct": _source(rng, "ct", shift),
        "full_field_ct": _source(rng, "ct", -shift),
    }


@pytest.fixture
def families():
    """Non-chest families: (fitted pool, tested images). Pictures share a "not a chest image" direction
    plus one of their own; "head_ct" lies beside the CT cluster instead, so only a gate that has seen it
    calls it other."""
    rng = np.random.default_rng(1)
    not_chest = _direction(12, 13, length=6.0)
    centres = {
        "photos": not_chest + _direction(14, length=6.0),
        "documents": not_chest + _direction(15, length=6.0),
        "faces": not_chest + _direction(16, length=6.0),
        "head_ct": MODALITY_CENTRE["ct"] + _direction(20, 21, length=6.0),
    }
    pool = {name: centre + rng.normal(0, 1, (200, DIMS)) for name, centre in centres.items()}
    tested = {name: centre + rng.normal(0, 1, (40, DIMS)) for name, centre in centres.items()}
    return pool, tested


def test_pooled_fit_routes_every_source_and_calls_fitted_families_other(sources, families):
    pool, tested = families
    gate = fit_on_sources(None, sources, pool)
    for features in sources.values():
        assert routing_rates(gate, features.test, features.modality)["routed"] > 0.95
    for images in tested.values():
        assert routing_rates(gate, images, None)["called_other"] > 0.95


def test_leave_one_source_out_never_fits_on_the_held_out_source(sources, families):
    pool, _ = families
    rows = {row["held_out"]: row for row in leave_one_source_out(sources, pool)}
    assert set(rows) == set(sources)
    for name, row in rows.items():
        assert name not in row["fitted_on"]
        assert row["unseen"]["images"] == len(sources[name].unseen())
        assert row["unseen"]["routed"] + row["unseen"]["called_other"] + row["unseen"]["wrong_modality"] == (
            pytest.approx(1.0)
        )
    for name in sources:  # sources like their siblings are routed without having been seen
        assert rows[name]["unseen"]["routed"] > 0.9, name


def test_leave_one_family_out_never_fits_on_the_held_out_family(sources, families):
    pool, tested = families
    report = leave_one_family_out(sources, pool, tested)
    rates = report["non_chest"]
    assert set(rates) == set(tested)
    assert all(rates[f]["images"] == len(tested[f]) for f in tested)
    for family in ("photos", "documents", "faces"):  # like the other pictures: called other even unseen
        assert rates[family]["called_other"] > 0.9, family
    # A family just beside the CT cluster is routed to CT when unseen, though the pooled fit calls it other.
    assert rates["head_ct"]["called_other"] < 0.5
    assert routing_rates(fit_on_sources(None, sources, pool), tested["head_ct"], None)["called_other"] > 0.9
    assert report["non_chest_summary"]["natural"]["images"] == 120


def test_leave_one_source_out_skips_a_modality_with_one_source(sources, families):
    pool, _ = families
    one_ct = {name: sources[name] for name in ("pediatric", "adult", "cropped_ct")}
    assert [row["held_out"] for row in leave_one_source_out(one_ct, pool)] == ["pediatric", "adult"]
    with pytest.raises(GateDataError, match="two sources"):
        leave_one_source_out({name: sources[name] for name in ("pediatric", "cropped_ct")}, pool)


def test_fit_refuses_a_missing_class(sources, families):
    pool, _ = families
    with pytest.raises(GateDataError, match="ct"):
        fit_on_sources(None, {"pediatric": sources["pediatric"]}, pool)
    with pytest.raises(GateDataError, match="other"):
        fit_on_sources(None, sources, {})


def test_routing_rates_split_into_routed_other_and_wrong(sources, families):
    pool, tested = families
    gate = fit_on_sources(None, sources, pool)
    mixed = np.concatenate([sources["adult"].test, sources["cropped_ct"].test, tested["photos"]])
    rates = routing_rates(gate, mixed, "xray")
    assert rates["images"] == len(mixed)
    assert rates["routed"] + rates["called_other"] + rates["wrong_modality"] == pytest.approx(1.0)
    assert rates["wrong_modality"] == pytest.approx(len(sources["cropped_ct"].test) / len(mixed), abs=0.02)
    assert rates["called_other"] == pytest.approx(len(tested["photos"]) / len(mixed), abs=0.02)


def _radiograph(size=96, seed=0):
    """A bright body with two dark lung fields, like a small chest film."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 0.75, np.float32)
    for x in (0.3, 0.7):
        cv2.ellipse(image, (int(size * x), size // 2), (size // 7, size // 3), 0, 0, 360, 0.25, -1)
    return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_augment_reframes_within_range(seed):
    image = _radiograph()
    rng = np.random.default_rng(seed)
    variants = [augment(image, rng) for _ in range(8)]
    for variant in variants:
        assert variant.dtype == np.float32
        assert variant.ndim == 2
        assert variant.min() >= 0.0
        assert variant.max() <= 1.0
        assert min(variant.shape) >= 8
    assert any(v.shape != image.shape or not np.allclose(v, image, atol=0.05) for v in variants)
    again = np.random.default_rng(seed)
    assert all(np.array_equal(a, augment(image, again)) for a in variants)


def test_zoom_out_draws_borders_around_the_image():
    image = _radiograph()
    rng = np.random.default_rng(3)
    larger = [v for v in (augment(image, rng) for _ in range(60)) if max(v.shape) > max(image.shape) * 1.05]
    assert larger, "about half of the re-framings put the image on a wider canvas"


def _write_split_folders(root: Path, per_class: int = 3) -> Path:
    for split in ("train", "val", "test"):
        for label, name in enumerate(("NORMAL", "PNEUMONIA")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                cv2.imwrite(
                    str(folder / f"{index}.jpg"), (_radiograph(64, seed=label * 10 + index) * 255).astype("uint8")
                )
    return root


class _CountingEmbedding:
    """Features from image statistics; counts the images it embeds."""

    def __init__(self):
        self.seen = 0

    def __call__(self, batch):
        self.seen += len(batch)
        batch = np.asarray(batch) / 255.0
        return np.stack([batch.mean(axis=(1, 2, 3)), batch.std(axis=(1, 2, 3))], axis=1)


def test_embed_source_augments_training_images_and_caches(tmp_path):
    source = GateSource("xray", _write_split_folders(tmp_path / "films"))
    embedding = _CountingEmbedding()
    features = embed_source(embedding, source, copies=2, cache=tmp_path / "cache")
    assert features.counts == {
        "train_plain": 6,
        "train_augmented": 12,
        "val_plain": 6,
        "val_augmented": 6,
        "test_plain": 6,
        "test_augmented": 6,
    }
    assert len(features.fit) == 18
    assert len(features.unseen()) == 18
    assert embedding.seen == 42
    again = embed_source(embedding, source, copies=2, cache=tmp_path / "cache")
    assert embedding.seen == 42, "the second call reads the cache"
    np.testing.assert_array_equal(again.fit, features.fit)
    embed_source(embedding, source, copies=1, cache=tmp_path / "cache")
    assert embedding.seen == 42 + 36, "a different recipe is not served from the cache"


def test_embed_other_reframes_each_family_and_tests_only_its_own_pictures(tmp_path, monkeypatch):
    pictures = {"photos": {"a": _radiograph(64, 1), "b": _radiograph(64, 2)}, "mr": {"c": _radiograph(64, 3)}}
    pool = {"photos": {**pictures["photos"], "extra": _radiograph(64, 4)}, "mr": dict(pictures["mr"])}
    monkeypatch.setattr(gate_fitting, "non_chest_images", lambda: pictures)
    monkeypatch.setattr(gate_fitting, "other_pool_images", lambda: pool)
    monkeypatch.setattr(gate_fitting, "OTHER_COPIES", 12)
    embedding = _CountingEmbedding()
    other = embed_other(embedding, cache=tmp_path)
    assert {f: len(v) for f, v in other.fit.items()} == {"photos": 3 + 3 * 4, "mr": 1 + 12}
    assert {f: len(v) for f, v in other.tested.items()} == {"photos": 2, "mr": 1}
    seen = embedding.seen
    again = embed_other(embedding, cache=tmp_path)
    assert embedding.seen == seen, "the second call reads the cache"
    np.testing.assert_array_equal(again.fit["photos"], other.fit["photos"])


def test_dicom_source_is_fitted_whole_and_rendered_in_every_ct_window(tmp_path):
    from tests.images_factory import dicom_bytes, dicom_dataset

    hounsfield = (_radiograph(64) * 2000 - 1000).astype(np.int16)
    path = tmp_path / "slice.dcm"
    path.write_bytes(dicom_bytes(dicom_dataset(hounsfield, Modality="CT", RescaleIntercept=0, RescaleSlope=1)))
    source = GateSource("ct", path)
    source.check()
    assert source.is_dicom
    renderings = source.images("train", None, 0)
    assert len(renderings) == len(dicom_renderings([path])) == 4
    assert len({round(float(r.mean()), 3) for r in renderings}) > 1, "each window shows the slice differently"
    assert source.images("val", None, 0) == []
    assert source.images("test", None, 0) == []


@pytest.mark.parametrize(
    ("modality", "make", "message"),
    [
        ("xray", lambda root: root / "missing", "does not exist"),
        ("ct", lambda root: root, "neither train/val/test"),
        ("mri", lambda root: root, "unknown modality"),
    ],
)
def test_bad_sources_are_reported(tmp_path, modality, make, message):
    with pytest.raises(GateDataError, match=message):
        GateSource(modality, make(tmp_path)).check()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["fit", "--xray", "{missing}", "--ct", "{films}"], "does not exist"),
        (["evaluate", "--xray", "{films}", "--ct", "{films2}", "--leave-one-source-out"], "two sources"),
    ],
)
def test_gate_cli_reports_bad_requests_as_usage_errors(tmp_path, capsys, arguments, message):
    folders = {"films": _write_split_folders(tmp_path / "films"), "films2": _write_split_folders(tmp_path / "films2")}
    folders["missing"] = tmp_path / "missing"
    argv = [a.format(**folders) for a in arguments]
    with pytest.raises(SystemExit) as exit_:
        main(["gate", *argv, "--weights", str(tmp_path / "no-weights")])
    assert exit_.value.code == USAGE_ERROR
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("modality", MODALITIES)
def test_real_sources_have_all_splits(shared_data, modality):
    folder = {"xray": "nih_chestxray14_pneumonia", "ct": "sars_cov2_ct"}[modality]
    source = GateSource(modality, shared_data / folder)
    source.check()
    assert not source.is_dicom
    assert len(source.images("val", 5, 0)) == 5
