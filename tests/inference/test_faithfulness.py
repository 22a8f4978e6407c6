"""Deletion and insertion curves on models whose answer is known, and the check on real (small) classifiers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lungviz.errors import ExplanationError
from lungviz.inference.faithfulness import (
    MAPS,
    input_gradient_map,
    mean_baseline,
    perturbation_curves,
    pixel_ranks,
    random_map,
)
from lungviz.inference.faithfulness import check_heatmap as check
from lungviz.inference.images import ChestImage
from lungviz.inference.session import AnalysisSession
from tests.images_factory import chest_radiograph

SIDE = 32
QUADRANT = np.zeros((SIDE, SIDE), bool)
QUADRANT[: SIDE // 2, : SIDE // 2] = True


def quadrant_model() -> keras.Model:
    """P(positive) = sigmoid(0.05 * (mean of the top-left quadrant - 140)): it looks nowhere else."""
    inputs = keras.Input((SIDE, SIDE, 3))
    quadrant = keras.layers.Cropping2D(((0, SIDE // 2), (0, SIDE // 2)))(inputs)
    mean = keras.layers.GlobalAveragePooling2D()(quadrant)
    logit = keras.layers.Dense(1, name="logit")(mean)
    model = keras.Model(inputs, logit)
    model.get_layer("logit").set_weights([np.full((3, 1), 0.05 / 3, np.float32), np.array([-7.0], np.float32)])
    return model


def quadrant_image(seed: int = 0) -> np.ndarray:
    """A bright top-left quadrant on a darker, noisy image, as a batch of one model input."""
    rng = np.random.default_rng(seed)
    gray = np.where(QUADRANT, 200.0, 40.0) + rng.normal(0, 10, (SIDE, SIDE))
    return np.repeat(gray[None, ..., None], 3, axis=-1).astype(np.float32)


def probability_of(model: keras.Model):
    return lambda batch: 1 / (1 + np.exp(-np.asarray(model(batch, training=False))[:, 0]))


@pytest.fixture(scope="module")
def quadrant():
    model = quadrant_model()
    inputs = quadrant_image()
    maps = {
        "quadrant": QUADRANT.astype(np.float32),
        "random": random_map((SIDE, SIDE)),
        "outside": (~QUADRANT).astype(np.float32),
        "gradient": input_gradient_map(lambda image: model(image)[:, 0], inputs),
    }
    return perturbation_curves(probability_of(model), inputs, maps)


def test_a_map_on_the_quadrant_the_model_reads_deletes_faster_and_inserts_faster_than_random(quadrant):
    deletion, insertion = quadrant
    assert deletion["quadrant"].scores[0] > 0.9  # the bright quadrant is the evidence
    assert deletion["quadrant"].area < deletion["random"].area - 0.3
    assert insertion["quadrant"].area > insertion["random"].area + 0.3
    # A map on everything but the quadrant is worse than random: its evidence goes last.
    assert deletion["outside"].area > deletion["random"].area
    assert insertion["outside"].area < insertion["random"].area


def test_the_image_gradient_of_a_quadrant_model_lies_on_the_quadrant_and_is_faithful(quadrant):
    gradient = input_gradient_map(lambda image: quadrant_model()(image)[:, 0], quadrant_image())
    assert gradient[~QUADRANT].max() == 0
    assert gradient[QUADRANT].min() > 0
    deletion, _ = quadrant
    assert deletion["gradient"].area == pytest.approx(deletion["quadrant"].area, abs=0.05)


@pytest.mark.parametrize("saliency", ["random", "ramp", "flat"])
def test_curves_follow_the_share_of_pixels_replaced_exactly(saliency):
    """A score that counts the original pixels left: deletion is 1 - f and insertion f at every step, areas 0.5."""
    inputs = 100 + np.random.default_rng(1).random((1, 20, 30, 3)).astype(np.float32)
    maps = {
        "random": random_map((20, 30), seed=3),
        "ramp": np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30),
        "flat": np.zeros((20, 30), np.float32),
    }

    def share_of_original(batch: np.ndarray) -> np.ndarray:
        return (batch[..., 0] == inputs[..., 0]).mean(axis=(1, 2))

    deletion, insertion = perturbation_curves(
        share_of_original, inputs, {saliency: maps[saliency]}, baseline=np.zeros_like(inputs), steps=10
    )
    fractions = np.linspace(0, 1, 11)
    np.testing.assert_allclose(deletion[saliency].fractions, fractions)
    np.testing.assert_allclose(deletion[saliency].scores, 1 - fractions, atol=1 / 600)
    np.testing.assert_allclose(insertion[saliency].scores, fractions, atol=1 / 600)
    assert deletion[saliency].area == pytest.approx(0.5, abs=1e-3)
    assert insertion[saliency].area == pytest.approx(0.5, abs=1e-3)


def test_one_model_call_per_curve_plus_one_for_both_ends():
    inputs = quadrant_image()
    calls: list[int] = []

    def counted(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.zeros(len(batch))

    maps = {name: random_map((SIDE, SIDE), seed) for seed, name in enumerate(MAPS)}
    perturbation_curves(counted, inputs, maps, steps=20)
    assert calls == [2] + [19] * 2 * len(MAPS)


def test_pixel_ranks_follow_the_map_and_break_ties_without_reading_order():
    ramp = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(pixel_ranks(ramp), 11 - np.arange(12).reshape(3, 4))
    flat = pixel_ranks(np.zeros((64, 64)))
    assert sorted(flat.ravel()) == list(range(64 * 64))
    rows_removed_first = np.nonzero(flat < 64 * 64 // 10)[0]
    assert 24 < rows_removed_first.mean() < 40  # spread over the image, not the top rows (mean row 3)


def test_the_mean_baseline_is_flat_at_the_image_mean():
    inputs = quadrant_image()
    baseline = mean_baseline(inputs)
    assert baseline.shape == inputs.shape
    np.testing.assert_allclose(baseline, inputs.mean(), rtol=1e-5)


@pytest.fixture(scope="module")
def analysed(weights_root):
    session = AnalysisSession(weights_root)
    image = ChestImage(pixels=chest_radiograph().astype(np.float32), name="chest.png")
    return session, session.analyse_image(image, task="xray-pneumonia")


@pytest.mark.parametrize("model", ["flat-softmax", "nested-sigmoid"])
def test_the_check_of_a_real_classifier_gives_areas_in_unit_range_and_a_verdict(analysed, model):
    session, analysis = analysed
    result = next(r for r in analysis.results if r.name == model)
    card = next(c for c in session.cards["xray-pneumonia"] if c.name == model)
    faithfulness = check(session.classifier(card), analysis.image.pixels, result, analysis.lungs)
    record = faithfulness.to_dict()
    assert set(record) == {
        "deletion_auc",
        "insertion_auc",
        "random_deletion_auc",
        "random_insertion_auc",
        "gradient_deletion_auc",
        "gradient_insertion_auc",
        "seconds",
    }
    assert all(0 <= value <= 1 for key, value in record.items() if key != "seconds")
    deletion = faithfulness.deletion["heatmap"]
    # The curve starts at the probability the column shows, for the class the heatmap explains.
    assert deletion.scores[0] == pytest.approx(result.probabilities[result.explained_class], abs=1e-4)
    assert faithfulness.verdict().startswith("removing the top 10% of this map")
    assert f"P({result.explained_class}) from {deletion.scores[0]:.2f}" in faithfulness.verdict()


def test_a_result_without_a_heatmap_cannot_be_checked(analysed):
    session, analysis = analysed
    card = session.cards["xray-pneumonia"][0]
    bare = session.classifier(card).run(analysis.image.pixels, method=None)
    with pytest.raises(ExplanationError, match="made no heatmap"):
        check(session.classifier(card), analysis.image.pixels, bare)
