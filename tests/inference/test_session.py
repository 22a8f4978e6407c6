import re

import numpy as np
import pytest

from lungviz.inference.images import ChestImage
from lungviz.inference.modality import ModalityAssessment
from lungviz.inference.session import AUTO, AnalysisSession


@pytest.fixture(scope="module")
def session(weights_root):
    return AnalysisSession(weights_root)


@pytest.mark.parametrize(
    ("modality", "requested", "task", "warns"),
    [
        ("xray", AUTO, "xray-pneumonia", False),
        ("ct", AUTO, "ct-covid", False),
        ("other", AUTO, None, True),
        (None, AUTO, "xray-pneumonia", True),
        ("other", "ct-covid", "ct-covid", True),
        ("xray", "ct-covid", "ct-covid", True),
        ("ct", "ct-covid", "ct-covid", False),
    ],
)
def test_routing(session, modality, requested, task, warns):
    chosen, warning = session.choose_task(
        ModalityAssessment(modality, 2.0 if modality == "other" else 0.5, "gate"), requested
    )
    assert chosen == task
    assert bool(warning) == warns


def test_an_image_called_other_is_not_classified_in_auto_mode(session):
    image = ChestImage(pixels=np.full((96, 96), 0.5, np.float32), name="scan.dcm", metadata={"Modality": "MR"})
    analysis = session.analyse_image(image)
    assert analysis.task is None
    assert analysis.results == []
    assert "does not look like a chest X-ray or chest CT" in analysis.warning
    forced = session.analyse_image(image, task="xray-pneumonia", method=None)
    assert [r.name for r in forced.results] == ["flat-softmax", "nested-sigmoid"]
    assert "was sent to the xray-pneumonia models as asked" in forced.warning


def test_progress_is_reported_per_model(session):
    image = ChestImage(
        pixels=np.full((96, 96), 0.5, np.float32), name="x.dcm", modality_hint="ct", metadata={"Modality": "CT"}
    )
    steps = []
    session.analyse_image(
        image, models=["nested-sigmoid"], progress=lambda message, step, total: steps.append((step, total))
    )
    assert steps == [(0, 1), (1, 1)]


def test_models_load_once_per_session(session):
    card = session.cards["ct-covid"][0]
    assert session.classifier(card) is session.classifier(card)


@pytest.mark.parametrize(
    ("models", "task", "target", "message"),
    [
        (["resnet"], AUTO, "predicted", "unknown model(s) resnet"),
        (None, "ct-covid", "PNEUMONIA", "cannot explain class 'PNEUMONIA'"),
    ],
)
def test_requests_the_models_cannot_serve_are_refused(session, models, task, target, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        session.check_request(models, task, target)
    session.check_request(["flat-softmax"], task, "predicted")  # a valid request passes
