import cv2
import numpy as np
import pytest

from lungviz.errors import ChoiceError, DatasetError
from lungviz.inference import lungs
from lungviz.inference.images import CT_WINDOWS, apply_window, load_image
from lungviz.inference.lungs import find_lungs
from lungviz.preprocessing import image_to_input
from lungviz.training.datasets import (
    LungCropper,
    SplitData,
    augment_images,
    dataset_classes,
    evaluation_dataset,
    iterate_batches,
    load_split,
    make_augmenter,
    training_dataset,
)
from tests.images_factory import chest_hounsfield, to_8bit
from tests.synthetic_dataset import write_blob_dataset

CLASSES = ("NORMAL", "PNEUMONIA")
SOURCES = np.full(32, "made-up", dtype=object)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("xray"), CLASSES, {"train": 7, "val": 3, "test": 2})


def test_class_order_comes_from_the_task_not_the_alphabet(tree):
    assert dataset_classes(tree, "ct-covid") == ("non-COVID", "COVID")  # sorted would put COVID first
    assert dataset_classes(tree) == CLASSES
    with pytest.raises(ChoiceError, match="unknown task"):
        dataset_classes(tree, "mri")


def test_split_is_decoded_stretched_and_labelled_by_folder(tree):
    split = load_split(tree, "train", CLASSES, (32, 24))
    assert split.images.shape == (14, 32, 24)
    assert split.images.dtype == np.uint8
    assert split.counts() == {"NORMAL": 7, "PNEUMONIA": 7}
    assert [CLASSES[label] for label in split.labels] == [f.parent.name for f in split.files]
    assert {f.suffix for f in split.files} == {".jpg", ".png"}
    # the positive class carries the bright blob
    brightest = split.images.reshape(len(split), -1).max(axis=1)
    assert brightest[split.labels == 1].min() > brightest[split.labels == 0].max()


def test_stretching_ignores_the_aspect_ratio(tmp_path):
    image = np.zeros((20, 90), np.uint8)
    image[:, :30] = 255  # left third white
    for split in ("train", "val"):
        for name in CLASSES:
            (tmp_path / split / name).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / split / name / "a.png"), image)
    split = load_split(tmp_path, "val", CLASSES, (30, 30))
    assert split.images.shape == (2, 30, 30)
    assert split.images[0, :, :9].min() == 255
    assert split.images[0, :, 11:].max() == 0


@pytest.mark.parametrize(
    ("break_tree", "message"),
    [
        (lambda root: (root / "val" / "PNEUMONIA").rename(root / "val" / "pneumonia"), "missing folder"),
        (lambda root: [p.unlink() for p in (root / "val" / "NORMAL").iterdir()], "no .jpg or .png"),
        (lambda root: (root / "val" / "NORMAL" / "img_000.jpg").write_bytes(b"not a jpeg"), "cannot decode"),
    ],
)
def test_broken_trees_raise_dataset_errors(tmp_path, break_tree, message):
    root = write_blob_dataset(tmp_path, CLASSES, {"val": 2})
    break_tree(root)
    with pytest.raises(DatasetError, match=message):
        load_split(root, "val", CLASSES, (16, 16))


def test_training_batches_are_model_inputs_shuffled_reproducibly(tree):
    split = load_split(tree, "train", CLASSES, (32, 32))
    first = [(x.numpy(), y.numpy()) for x, y in training_dataset(split, 4, seed=3, augment=False)]
    again = [y.numpy() for _, y in training_dataset(split, 4, seed=3, augment=False)]
    assert [b.shape for b, _ in first] == [(4, 32, 32, 3)] * 3 + [(2, 32, 32, 3)]
    assert all(b.dtype == np.float32 and b.min() >= 0 and b.max() <= 255 for b, _ in first)
    assert all(np.array_equal(b[..., 0], b[..., 2]) for b, _ in first)
    labels = np.concatenate([y for _, y in first])
    assert sorted(labels) == sorted(split.labels)
    assert not np.array_equal(labels, split.labels)
    np.testing.assert_array_equal(labels, np.concatenate(again))


def test_evaluation_batches_keep_file_order_and_match_the_plain_iterator(tree):
    split = load_split(tree, "test", CLASSES, (32, 32))
    from_tf = np.concatenate([x.numpy() for x, _ in evaluation_dataset(split, 3)])
    plain = np.concatenate(list(iterate_batches(split.images, 3)))
    np.testing.assert_array_equal(from_tf, plain)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in evaluation_dataset(split, 3)]), split.labels)


def test_augmentation_jitters_but_never_flips(tmp_path):
    image = np.full((48, 48), 40, np.uint8)
    image[:20, :20] = 230  # bright top-left corner: any flip moves it to another quadrant
    split = SplitData(
        "train", CLASSES, (tmp_path,) * 32, np.repeat(image[None], 32, axis=0), np.zeros(32, np.int64), SOURCES[:32]
    )
    batches = np.concatenate([x.numpy() for x, _ in training_dataset(split, 16, seed=0, augment=True)])
    assert batches.shape == (32, 48, 48, 3)
    top, bottom = batches[:, :24].mean(axis=(1, 2, 3)), batches[:, 24:].mean(axis=(1, 2, 3))
    left, right = batches[:, :, :24].mean(axis=(1, 2, 3)), batches[:, :, 24:].mean(axis=(1, 2, 3))
    assert np.all(top > bottom + 30)
    assert np.all(left > right + 30)
    assert np.abs(batches[..., 0] - image).mean(axis=(1, 2)).min() > 0.5  # every copy was changed
    assert not any("flip" in layer.name for layer in make_augmenter(0).layers)


def test_augmentation_differs_per_image_and_epoch_but_repeats_with_the_seed():
    image = np.random.default_rng(1).integers(0, 255, size=(24, 24), dtype=np.uint8)
    split = SplitData(
        "train", CLASSES, (None,) * 6, np.repeat(image[None], 6, axis=0), np.zeros(6, np.int64), SOURCES[:6]
    )

    def epochs(dataset, count=2):
        return [np.concatenate([x.numpy() for x, _ in dataset]) for _ in range(count)]

    first, second = epochs(training_dataset(split, 3, seed=5, augment=True))
    assert len({copy.tobytes() for copy in first}) == 6
    assert not np.array_equal(first, second)
    replay = epochs(training_dataset(split, 3, seed=5, augment=True))
    np.testing.assert_array_equal(replay[0], first)
    np.testing.assert_array_equal(replay[1], second)


@pytest.fixture
def ct_tree(tmp_path):
    """A CT source: a full-field lung-window slice (the body small in a wide field of air), and a blank slice."""
    window = to_8bit(apply_window(chest_hounsfield(160, 128).astype(np.float32), CT_WINDOWS["lung"]))
    framed = np.full((320, 300), window.min(), np.uint8)
    framed[100:260, 90:218] = window
    for split in ("train", "val"):
        for name, image in (("non-COVID", framed), ("COVID", np.full((200, 200), 30, np.uint8))):
            (tmp_path / "ct" / split / name).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / "ct" / split / name / "slice.png"), image)
    return tmp_path / "ct"


def test_lung_crop_frames_training_images_exactly_as_inference_does(ct_tree, tmp_path, monkeypatch):
    cropper = LungCropper("ct", None, tmp_path / "cache")
    split = load_split(ct_tree, "train", ("non-COVID", "COVID"), (64, 64), cropper)
    assert split.lungs_found.tolist() == [True, False]
    pixels = load_image((ct_tree / "train" / "non-COVID" / "slice.png").read_bytes(), "slice.png").pixels
    box = find_lungs(pixels, "ct").crop_box()
    assert (box[0] >= 90, box[2] <= 218) == (True, True)  # inside the framed slice: the air around the body is cut away
    np.testing.assert_allclose(split.images[0], image_to_input(pixels, (64, 64), box)[0, ..., 0], atol=1)
    np.testing.assert_array_equal(split.images[1], np.full((64, 64), 30))  # no lungs: the whole image
    assert split.lungs_found_counts() == {"found": 1, "images": 2}

    # the boxes are cached per file: a second read never looks for lungs again
    monkeypatch.setattr(lungs, "find_lungs", lambda *args, **kwargs: pytest.fail("boxes were not cached"))
    again = load_split(ct_tree, "train", ("non-COVID", "COVID"), (64, 64), LungCropper("ct", None, tmp_path / "cache"))
    np.testing.assert_array_equal(again.images, split.images)


def test_radiographs_cannot_be_cropped_without_the_segmenter(tmp_path):
    with pytest.raises(DatasetError, match="segmenter"):
        LungCropper("xray", None, tmp_path)


def test_sources_are_kept_apart_and_subsets_keep_every_column(tree, tmp_path):
    other = write_blob_dataset(tmp_path / "adults", CLASSES, {"train": 2}, seed=4)
    split = load_split([tree, other], "train", CLASSES, (16, 16))
    assert split.source_names() == [tree.name, "adults"]
    assert split.counts_by_source() == {
        tree.name: {"NORMAL": 7, "PNEUMONIA": 7},
        "adults": {"NORMAL": 2, "PNEUMONIA": 2},
    }
    adults = split.subset(split.sources == "adults")
    assert [f.parent.parent.parent.name for f in adults.files] == ["adults"] * 4
    np.testing.assert_array_equal(adults.images, split.images[-4:])
    with pytest.raises(DatasetError, match="share a folder name"):
        load_split([tree, tree], "train", CLASSES, (16, 16))


def test_augment_images_gives_one_reproducible_training_copy_per_seed():
    images = np.random.default_rng(2).integers(0, 255, size=(3, 24, 24), dtype=np.uint8)
    first, again, other = augment_images(images, 1), augment_images(images, 1), augment_images(images, 2)
    assert first.shape == (3, 24, 24, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.abs(first[..., 0] - images).mean() > 1.0
