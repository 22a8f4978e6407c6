import io
import zipfile

import h5py
import numpy as np
import pytest

from lungviz.errors import ModelLoadError
from lungviz.models.registry import discover, load_model
from lungviz.models.storage import INT8_MEMBER, SCALES_GROUP, load_compact, save_compact

TOLERANCE = 2e-3


def mixed_model(seed: int = 0):
    """Conv, depthwise conv, BatchNorm and dense layers whose output channels differ in size by 100x.

    Channels of very different magnitude are what per-channel scales are for: one scale per
    tensor would round the small channels to a few codes.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(48, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.DepthwiseConv2D(5, padding="same", name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(64, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(32, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    for name in ("conv", "depthwise", "pointwise", "dense"):
        kernel = model.get_layer(name).kernel
        channels = kernel.shape[-2] if name == "depthwise" else kernel.shape[-1]
        spread = np.logspace(-2, 0, channels).astype(np.float32)
        kernel.assign(np.asarray(kernel) * (spread[:, None] if name == "depthwise" else spread))
    return model


def probe_images(size: int = 32, count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def test_int8_round_trip_keeps_every_channel_within_half_a_step(tmp_path):
    model, probe = mixed_model(), probe_images()
    stored = save_compact(model, tmp_path / "m.keras", probe)
    assert stored.dtype == "int8-per-channel"
    assert stored.tried == {"int8-per-channel": stored.max_output_change}
    assert 0 < stored.max_output_change <= TOLERANCE

    reloaded = load_compact(tmp_path / "m.keras")
    assert all(v.dtype == "float32" for v in reloaded.weights)
    np.testing.assert_allclose(reloaded(probe), model(probe), atol=TOLERANCE)
    # conv and dense: one scale per output channel (last axis); depthwise: per channel (kh, kw, C, 1)
    for name, reduced in [("conv", (0, 1, 2)), ("depthwise", (0, 1)), ("pointwise", (0, 1, 2)), ("dense", (0,))]:
        original = np.asarray(model.get_layer(name).kernel)
        restored = np.asarray(reloaded.get_layer(name).kernel)
        half_step = np.abs(original).max(axis=reduced, keepdims=True) / 127 / 2
        assert np.all(np.abs(restored - original) <= half_step * (1 + 1e-5)), name
        assert not np.array_equal(restored, original), name  # really quantised
    for name in ("head", "bn"):  # small tensors and BatchNorm stay float16
        for kept, original in zip(reloaded.get_layer(name).weights, model.get_layer(name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(kept), np.asarray(original).astype(np.float16))


def float16_exact(model):
    """The model with every weight rounded to float16, so that float16 storage moves nothing and int8 does."""
    model.set_weights([w.astype(np.float16).astype(np.float32) for w in model.get_weights()])
    return model


def test_int8_file_is_much_smaller_than_float16(tmp_path):
    probe = probe_images()
    assert save_compact(mixed_model(), tmp_path / "int8.keras", probe).dtype == "int8-per-channel"
    assert save_compact(float16_exact(mixed_model()), tmp_path / "half.keras", probe, tolerance=0.0).dtype == "float16"
    assert (tmp_path / "int8.keras").stat().st_size < 0.7 * (tmp_path / "half.keras").stat().st_size


@pytest.mark.parametrize(
    ("make_model", "expected", "tried"),
    [
        (lambda: float16_exact(mixed_model()), "float16", ["int8-per-channel", "float16"]),
        (mixed_model, "float32", ["int8-per-channel", "float16"]),
    ],
    ids=["int8-moves-outputs", "both-move-outputs"],
)
def test_outputs_that_move_fall_back_to_the_next_precision_in_a_plain_keras_file(tmp_path, make_model, expected, tried):
    import keras

    model, probe = make_model(), probe_images()
    stored = save_compact(model, tmp_path / "m.keras", probe, tolerance=0.0)
    assert (stored.dtype, stored.max_output_change, list(stored.tried)) == (expected, 0.0, tried)
    assert stored.tried["int8-per-channel"] > 0
    for reloaded in (load_compact(tmp_path / "m.keras"), keras.models.load_model(tmp_path / "m.keras", safe_mode=True)):
        assert all(v.dtype == "float32" for v in reloaded.weights)
        for kept, original in zip(reloaded.weights, model.weights, strict=True):
            np.testing.assert_array_equal(np.asarray(kept), np.asarray(original))
        np.testing.assert_array_equal(reloaded(probe), model(probe))


def test_plain_keras_refuses_an_int8_file_rather_than_read_codes_as_weights(tmp_path):
    import keras

    assert save_compact(mixed_model(), tmp_path / "m.keras", probe_images()).dtype == "int8-per-channel"
    with pytest.raises(ValueError, match=r"Expected a model\.weights\.h5"):
        keras.models.load_model(tmp_path / "m.keras", safe_mode=True)


@pytest.mark.parametrize("name", ["flat-softmax", "nested-sigmoid"])
def test_registry_models_are_stored_smaller_and_predict_the_same(weights_root, tmp_path, name):
    card = next(c for c in discover(weights_root)["ct-covid"] if c.name == name)
    model = load_model(card)
    probe = probe_images(card.input_size[0])
    stored = save_compact(model, tmp_path / "compact.keras", probe)
    model.save(tmp_path / "full.keras")
    assert stored.dtype in {"int8-per-channel", "float16"}
    assert (tmp_path / "compact.keras").stat().st_size < 0.75 * (tmp_path / "full.keras").stat().st_size
    np.testing.assert_allclose(load_compact(tmp_path / "compact.keras")(probe), model(probe), atol=TOLERANCE)


def rewrite_scales(path, change) -> None:
    """Apply `change(scales_group)` to the int8 member of an archive in place."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    weights = io.BytesIO(members[INT8_MEMBER])
    with h5py.File(weights, "a") as file:
        change(file[SCALES_GROUP])
    members[INT8_MEMBER] = weights.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def first_scale(scales):
    found = []
    scales.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    return found[0]


def wrong_shape(scales):
    name = first_scale(scales)
    shape = scales[name].shape
    del scales[name]
    scales.create_dataset(name, data=np.ones((*shape[:-1], shape[-1] + 1), np.float32))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(b"not a zip"), r"m\.keras is not a readable \.keras \(zip\) archive"),
        (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "not a readable"),
        (lambda path: rewrite_scales(path, wrong_shape), r"m\.keras: int8 weights .* do not fit scales"),
        (
            lambda path: rewrite_scales(path, lambda s: s.create_dataset("extra/vars/0", data=[1.0])),
            "for weights it does not hold",
        ),
        (lambda path: rewrite_scales(path, lambda s: s.clear()), "holds no int8_scales"),
    ],
    ids=["not-a-zip", "truncated", "scales-do-not-fit", "stray-scales", "no-scales"],
)
def test_a_damaged_file_is_a_clear_model_load_error(tmp_path, damage, message):
    path = tmp_path / "m.keras"
    assert save_compact(mixed_model(), path, probe_images()).dtype == "int8-per-channel"
    damage(path)
    with pytest.raises(ModelLoadError, match=message):
        load_compact(path)
