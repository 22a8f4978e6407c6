import numpy as np
import pytest

from lungviz.models.registry import discover, load_model
from lungviz.models.storage import save_compact


@pytest.mark.parametrize("name", ["flat-softmax", "nested-sigmoid"])
def test_float16_file_is_smaller_and_predicts_the_same(weights_root, tmp_path, name):
    import keras

    card = next(c for c in discover(weights_root)["ct-covid"] if c.name == name)
    model = load_model(card)
    probe = np.random.default_rng(0).uniform(0, 255, (4, *card.input_size, 3)).astype(np.float32)
    change = save_compact(model, tmp_path / "compact.keras", probe)
    model.save(tmp_path / "full.keras")
    assert (tmp_path / "compact.keras").stat().st_size < 0.75 * (tmp_path / "full.keras").stat().st_size
    reloaded = keras.models.load_model(tmp_path / "compact.keras", safe_mode=True)
    assert all(v.dtype == "float32" for v in reloaded.weights)
    assert change < 2e-3
    np.testing.assert_allclose(reloaded(probe), model(probe), atol=2e-3)
    assert not np.array_equal(np.asarray(reloaded.weights[0]), np.asarray(model.weights[0]))  # really rounded


def test_a_refused_float16_save_leaves_the_exact_float32_model(weights_root, tmp_path):
    import keras

    card = discover(weights_root)["ct-covid"][0]
    model = load_model(card)
    probe = np.random.default_rng(0).uniform(0, 255, (2, *card.input_size, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="kept float32"):
        save_compact(model, tmp_path / "m.keras", probe, tolerance=0.0)
    reloaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    for kept, original in zip(reloaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(kept), np.asarray(original))
    np.testing.assert_array_equal(reloaded(probe), model(probe))
