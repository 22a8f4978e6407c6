import numpy as np
import pytest

from lungviz.inference.images import ChestImage
from lungviz.inference.modality import CLASSES, ModalityGate, assess_modality, load_gate
from lungviz.models.registry import DEFAULT_WEIGHTS_DIR
from lungviz.training.gate import augment, fit_gate, natural_images


class _MeanEmbedding:
    """A stand-in embedding: features are fixed per-modality clusters chosen by image brightness."""

    def __call__(self, batch, training=False):
        brightness = np.asarray(batch).mean(axis=(1, 2, 3)) / 255.0
        return np.stack([brightness * 10, (1 - brightness) * 10, np.zeros_like(brightness)], axis=1)


def _clusters(rng, centre, n=400):
    return rng.normal(centre, 1.0, size=(n, len(centre)))


CENTRES = {"xray": [0.0, 0.0, 0.0, 0.0], "ct": [8.0, 0.0, 0.0, 0.0], "other": [4.0, 10.0, -10.0, 0.0]}


@pytest.fixture
def gate():
    rng = np.random.default_rng(0)
    return fit_gate(None, {name: _clusters(rng, centre) for name, centre in CENTRES.items()})


def test_gate_routes_each_cluster_and_scores_other_above_one(gate):
    rng = np.random.default_rng(1)
    for index, name in enumerate(CLASSES):
        features = _clusters(rng, CENTRES[name], 500)
        verdicts = gate.predict(features)
        assert np.mean(verdicts == index) > 0.99
        np.testing.assert_array_equal(gate.scores(features) > 1, verdicts == CLASSES.index("other"))


def test_scores_stay_finite_far_from_everything(gate):
    scores = gate.scores(np.array([[4.0, 1e6, -1e6, 0.0], [1e6, 0.0, 0.0, 0.0]]))
    assert np.all(np.isfinite(scores))
    assert np.all(scores > 0)


def test_assessment_uses_the_embedding_and_the_other_class():
    rng = np.random.default_rng(2)
    embed = _MeanEmbedding()
    train = {
        name: np.asarray(embed(np.full((1, 8, 8, 3), value))) + rng.normal(0, 0.2, (300, 3))
        for name, value in (("xray", 30.0), ("ct", 220.0), ("other", 127.5))
    }
    gate = fit_gate(embed, train)
    dark = gate.assess(np.full((100, 100), 30 / 255, np.float32))
    assert (dark.predicted, dark.score < 1) == ("xray", True)
    assert gate.assess(np.full((100, 100), 220 / 255, np.float32)).predicted == "ct"
    middle = gate.assess(np.full((100, 100), 0.5, np.float32))
    assert middle.predicted == "other"
    assert middle.score > 1
    assert middle.source == "gate"


@pytest.mark.parametrize(
    ("hint", "dicom_modality", "expected", "source"),
    [
        ("ct", "CT", "ct", "dicom"),
        ("xray", "DX", "xray", "dicom"),
        (None, "MR", "other", "dicom"),
        (None, "us", "other", "dicom"),
        (None, "OT", None, "none"),
        (None, "SC", None, "none"),
    ],
)
def test_dicom_header_is_trusted_before_the_gate(hint, dicom_modality, expected, source):
    image = ChestImage(
        pixels=np.zeros((64, 64), np.float32), name="x.dcm", modality_hint=hint, metadata={"Modality": dicom_modality}
    )
    assessment = assess_modality(image, gate=None)
    assert (assessment.predicted, assessment.source) == (expected, source)


@pytest.mark.parametrize(
    ("dicom_modality", "expected"),
    [("DX", "xray"), ("CR", "xray"), ("CT", "ct"), ("MG", "other"), ("XA", "other"), ("MR", "other")],
)
def test_dicom_modality_of_a_read_file_routes_it(dicom_modality, expected):
    from lungviz.inference.images import load_image
    from tests.images_factory import chest_radiograph, dicom_bytes, dicom_dataset

    stored = np.rint(chest_radiograph(128, 128) * 4095).astype(np.uint16)
    data = dicom_bytes(dicom_dataset(stored, bits_stored=12, Modality=dicom_modality))
    assert assess_modality(load_image(data, "x.dcm"), gate=None).predicted == expected


def test_without_gate_or_header_the_modality_is_unknown():
    image = ChestImage(pixels=np.zeros((64, 64), np.float32), name="x.png", modality_hint=None, metadata={})
    assert assess_modality(image, None).to_dict() == {"predicted": None, "score": None, "source": "none"}


@pytest.fixture(scope="module")
def shipped_gate() -> ModalityGate:
    gate = load_gate(DEFAULT_WEIGHTS_DIR)
    assert gate is not None, f"the repository ships a gate in {DEFAULT_WEIGHTS_DIR}/gate"
    return gate


def test_shipped_gate_calls_natural_images_other_even_re_framed(shipped_gate):
    """These pictures were fitted on (their held-out rates are on the card, leave-one-family-out); a regression
    check that the shipped weights still call them other, through re-framings fitting never drew."""
    rng = np.random.default_rng(12345)
    pictures = list(natural_images().values())
    verdicts = [shipped_gate.assess(pixels).predicted for pixels in [*pictures, *(augment(p, rng) for p in pictures)]]
    assert np.mean([v == "other" for v in verdicts]) >= 0.9


@pytest.mark.parametrize(
    ("modality", "folder"),
    [("xray", "kermany_chest_xray_pneumonia"), ("xray", "nih_chestxray14_pneumonia"), ("ct", "sars_cov2_ct")],
)
def test_shipped_gate_on_real_test_images(shipped_gate, shared_data, modality, folder):
    from lungviz.training import datasets

    data = datasets.load_split(shared_data / folder, "test", datasets.dataset_classes(shared_data / folder), (224, 224))
    sample = data.images[:: max(1, len(data.images) // 40)]
    verdicts = [shipped_gate.assess(image / 255.0).predicted for image in sample]
    assert np.mean([v == modality for v in verdicts]) >= 0.9


def test_shipped_gate_routes_a_full_field_dicom_ct_slice_shown_as_a_picture(shipped_gate):
    """CT_small.dcm rendered as an upload shows it, then judged on its pixels alone (as a PNG export would be)."""
    from lungviz.training.gate import bundled_dicom_ct, dicom_renderings

    verdicts = [shipped_gate.assess(pixels).predicted for pixels in dicom_renderings([bundled_dicom_ct()])]
    assert verdicts.count("ct") >= 3, verdicts
