import re
import threading

import numpy as np
import pytest

from lungviz.inference.images import CT_WINDOWS, ChestImage, apply_window
from lungviz.inference.modality import ModalityAssessment
from lungviz.inference.session import AUTO, NO_LUNGS, AnalysisSession
from tests.images_factory import chest_hounsfield


def _ct_slice(hounsfield: np.ndarray) -> ChestImage:
    """A CT slice as a DICOM gives it: Hounsfield units, the lung-window picture and the header's modality."""
    hu = hounsfield.astype(np.float32)
    return ChestImage(pixels=apply_window(hu, CT_WINDOWS["lung"]), name="slice.dcm", modality_hint="ct",
                      metadata={"Modality": "CT"}, hounsfield=hu)  # fmt: skip


def _abdomen() -> np.ndarray:
    """Soft tissue with a little bowel gas, air around it: no lungs."""
    y, x = np.mgrid[-1:1:320j, -1:1:256j]
    hu = np.where((x / 0.9) ** 2 + (y / 0.8) ** 2 < 1, 45.0, -1000.0)
    hu[((x - 0.2) / 0.06) ** 2 + ((y + 0.1) / 0.05) ** 2 < 1] = -950
    return hu


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
    image = _ct_slice(chest_hounsfield())
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


def test_warm_up_loads_every_model_and_its_explainer_once(weights_root, monkeypatch):
    from lungviz.inference import session as session_module

    loads = []
    real_load = session_module.load_model

    def counting_load(card):
        loads.append((card.task, card.name))
        return real_load(card)

    monkeypatch.setattr(session_module, "load_model", counting_load)
    fresh = AnalysisSession(weights_root)
    assert fresh.start_warm_up() is fresh.start_warm_up()  # one background warm-up per session
    racing = threading.Thread(target=fresh.warm_up)  # and another thread warming up at the same time
    racing.start()
    for thread in (fresh.start_warm_up(), racing):
        thread.join(timeout=120)
    expected = sorted((card.task, card.name) for cards in fresh.cards.values() for card in cards)
    assert sorted(loads) == expected
    assert all("gradcam" in fresh.classifier(card)._explainers for cards in fresh.cards.values() for card in cards)
    image = _ct_slice(chest_hounsfield())
    assert len(fresh.analyse_image(image).results) == 2
    assert sorted(loads) == expected  # the analysis reused the warmed-up models


def test_warm_up_reports_a_broken_model_and_warms_the_rest(weights_root, tmp_path):
    import shutil

    shutil.copytree(weights_root, tmp_path / "weights")
    (tmp_path / "weights" / "ct-covid" / "flat-softmax.keras").write_bytes(b"not a keras file")
    fresh = AnalysisSession(tmp_path / "weights")
    failures = fresh.warm_up()
    assert len(failures) == 1
    assert failures[0].startswith("ct-covid/flat-softmax: cannot load model")
    assert len(fresh._classifiers) == 3


def test_a_process_shares_one_session_per_weights_folder(weights_root, tmp_path):
    from lungviz.inference.session import shared_session

    assert shared_session(weights_root) is shared_session(weights_root / ".")
    assert shared_session(tmp_path) is not shared_session(weights_root)


def test_a_chest_ct_slice_records_its_lungs_and_each_heatmaps_share_inside_them(session):
    analysis = session.analyse_image(_ct_slice(chest_hounsfield()))
    record = analysis.record()
    assert record["task"] == "ct-covid"
    assert record["lungs"]["found"] is True
    x0, y0, x1, y1 = record["lungs"]["box"]
    assert 0 <= x0 < x1 <= 256
    assert 0 <= y0 < y1 <= 320
    assert 0.1 < record["lungs"]["fraction"] < 0.5
    for model, result in zip(record["models"], analysis.results, strict=True):
        assert model["lung_attention"] == (None if result.lung_attention is None else round(result.lung_attention, 4))
        assert model["heatmap_peak"] == (None if result.heatmap_peak is None else list(result.heatmap_peak))


def test_a_slice_without_lungs_is_not_classified_unless_a_task_is_chosen(session):
    automatic = session.analyse_image(_ct_slice(_abdomen()))
    assert automatic.task is None
    assert automatic.results == []
    assert automatic.warning == NO_LUNGS
    assert automatic.record()["lungs"] == {"found": False, "box": None, "fraction": round(automatic.lungs.fraction, 4)}
    chosen = session.analyse_image(_ct_slice(_abdomen()), task="ct-covid", method=None)
    assert len(chosen.results) == 2
    assert "no lungs were found in this image; the models saw the whole image as asked" in chosen.warning
