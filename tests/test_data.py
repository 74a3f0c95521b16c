import gzip
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lowssl.data import (
    DatasetError,
    FashionMNIST,
    ImageFolder,
    SeededSamples,
    SyntheticImages,
    build_dataset,
    held_out_split,
    read_idx,
)


@pytest.fixture(scope="module")
def fashion_train():
    return FashionMNIST("train")


def test_fashion_mnist_shapes_labels_and_balance(fashion_train):
    test = FashionMNIST("test")
    assert len(fashion_train) == 60_000 and len(test) == 10_000
    assert fashion_train.images.shape == (60_000, 28, 28)
    assert np.bincount(fashion_train.targets).tolist() == [6_000] * 10
    assert np.bincount(test.targets).tolist() == [1_000] * 10
    image, label = fashion_train[0]
    assert image.mode == "RGB" and image.size == (32, 32)
    assert 0 <= label < 10
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey repeated on 3 channels


def test_fashion_mnist_upsampling_is_configurable():
    dataset = FashionMNIST("test", image_size=64)
    assert dataset[3][0].size == (64, 64)
    native = FashionMNIST("test", image_size=28)
    assert np.array_equal(np.asarray(native[3][0])[..., 0], native.images[3])


def test_fashion_mnist_bad_split_and_root(tmp_path):
    with pytest.raises(DatasetError, match="allowed values: train, test"):
        FashionMNIST("validation")
    with pytest.raises(DatasetError, match=str(tmp_path)):
        FashionMNIST("train", root=tmp_path)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(path, "wb") as file:
        file.write(bytes([0, 0, 8, 1, 0, 0, 0, 10]) + bytes(5))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)


def _tree(root, counts):
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (20, 16), (i * 10, 0, 0)).save(root / name / f"{name}_{i}.JPEG")


def test_imagefolder_is_deterministic(tmp_path):
    _tree(tmp_path / "train", {"n02": 3, "n01": 2})
    first, second = ImageFolder(tmp_path / "train"), ImageFolder(tmp_path / "train")
    assert first.classes == ["n01", "n02"]
    assert [p.name for p, _ in first.samples] == [p.name for p, _ in second.samples]
    assert first.targets.tolist() == [0, 0, 1, 1, 1]
    image, label = first[4]
    assert image.size == (20, 16) and label == 1
    assert len(build_dataset("imagefolder", "train", root=tmp_path)) == 5


def test_imagefolder_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    _tree(tmp_path / "train", {"n01": 1})
    (tmp_path / "train" / "n02").mkdir()
    with pytest.raises(DatasetError, match="n02 holds no images"):
        ImageFolder(tmp_path / "train")
    (tmp_path / "train" / "n02" / "broken.JPEG").write_bytes(b"not a jpeg")
    dataset = ImageFolder(tmp_path / "train")
    with pytest.raises(DatasetError, match="broken.JPEG"):
        dataset[1]


def test_imagefolder_fingerprint_sees_a_swap_an_edit_and_a_replacement(tmp_path, fashion_train):
    """What keys the evaluation's feature cache and stored results: stable for the same files, another
    for swapped class folders (same file names in both), an edited image, a file replaced by another."""
    _tree(tmp_path, {"a": 2, "b": 2})
    for name in ("a", "b"):  # the same relative names in both classes
        for i, path in enumerate(sorted((tmp_path / name).iterdir())):
            path.rename(tmp_path / name / f"{i}.JPEG")
    dataset = ImageFolder(tmp_path)
    dataset[0]
    assert "fingerprint" not in vars(dataset)  # loading images does not compute it
    seen = [dataset.fingerprint]
    assert "fingerprint" in vars(dataset)  # computed once per dataset object, then kept
    assert ImageFolder(tmp_path).fingerprint == seen[0]
    (tmp_path / "a").rename(tmp_path / "swap")
    (tmp_path / "b").rename(tmp_path / "a")
    (tmp_path / "swap").rename(tmp_path / "b")
    seen.append(ImageFolder(tmp_path).fingerprint)
    Image.new("RGB", (20, 16), (0, 99, 0)).save(tmp_path / "a" / "0.JPEG")  # edited in place
    seen.append(ImageFolder(tmp_path).fingerprint)
    replacement = tmp_path / "replacement.JPEG"
    (tmp_path / "b" / "1.JPEG").rename(replacement)
    (tmp_path / "a" / "1.JPEG").rename(tmp_path / "b" / "1.JPEG")  # another file, same size and mtime
    replacement.rename(tmp_path / "a" / "1.JPEG")
    seen.append(ImageFolder(tmp_path).fingerprint)
    assert len(set(seen)) == 4
    # Fashion-MNIST's is its decoded pixels and labels, and the size they are served at
    test = FashionMNIST("test")
    assert (
        len({fashion_train.fingerprint, test.fingerprint, FashionMNIST("test", image_size=28).fingerprint})
        == 3
    )
    assert FashionMNIST("test").fingerprint == test.fingerprint


def test_16_bit_png_keeps_its_grey_levels_and_32_bit_is_refused(tmp_path):
    """Before: PIL's convert("RGB") clipped a 16-bit PNG (mode I;16) at 255: 144 grey levels -> 2."""
    levels = (np.arange(144, dtype=np.uint16) * 455).reshape(12, 12)  # 0 .. 65065
    (tmp_path / "grey").mkdir()
    Image.fromarray(levels).save(tmp_path / "grey" / "deep.png")
    with Image.open(tmp_path / "grey" / "deep.png") as saved:
        assert saved.mode == "I;16"
    image = np.asarray(ImageFolder(tmp_path)[0][0])
    assert len(np.unique(image)) == 144 and np.array_equal(image[..., 1], levels >> 8)
    Image.fromarray(levels.astype(np.int32) * 1000).save(tmp_path / "grey" / "deep.png.tif")
    with pytest.raises(DatasetError, match=r"deep.png.tif: its pixels are 32-bit \(PIL mode I\)"):
        ImageFolder(tmp_path)[1]


def test_held_out_split_is_deterministic_and_balanced(fashion_train):
    train, held = held_out_split(fashion_train.targets, per_class=50, seed=0)
    again_train, again_held = held_out_split(fashion_train.targets, per_class=50, seed=0)
    other = held_out_split(fashion_train.targets, per_class=50, seed=1)[1]
    assert np.array_equal(held, again_held) and np.array_equal(train, again_train)
    assert not np.array_equal(held, other)
    assert len(held) == 500 and len(train) == 59_500
    assert np.bincount(fashion_train.targets[held]).tolist() == [50] * 10
    assert not set(train) & set(held)


def test_held_out_split_refuses_too_small_classes():
    with pytest.raises(DatasetError, match="lower per_class"):
        held_out_split([0, 0, 1, 1], per_class=2)


def test_synthetic_images_are_deterministic():
    a, b = SyntheticImages(seed=3), SyntheticImages(seed=3)
    assert np.array_equal(np.asarray(a[5][0]), np.asarray(b[5][0]))
    assert a[5][1] == 1 and len(a) == 64


def test_unknown_dataset_lists_allowed_values():
    with pytest.raises(DatasetError, match="fashion-mnist, imagefolder, synthetic"):
        build_dataset("imagenet21k", "train")


def test_a_registered_dataset_is_one_the_stages_and_the_pretrain_config_accept():
    from lowssl.config import ConfigError
    from lowssl.data import DATASETS, register_dataset
    from lowssl.pretrain.config import DataConfig

    with pytest.raises(
        ConfigError, match=r"config key 'dataset': unknown dataset 'fasion-mnist'\. Did you mean"
    ):
        DataConfig(dataset="fasion-mnist")

    @register_dataset("tiny-synthetic")
    def tiny(split, root, image_size, transform):
        return SyntheticImages(8, image_size=image_size, transform=transform)

    try:
        assert (
            "tiny-synthetic" in DATASETS and DataConfig(dataset="tiny-synthetic").dataset == "tiny-synthetic"
        )
        assert len(build_dataset("tiny-synthetic", "val")) == 8
    finally:
        DATASETS.unregister("tiny-synthetic")
    with pytest.raises(DatasetError, match="Did you mean 'synthetic'"):
        build_dataset("tiny-synthetic", "train")


def test_val_classes_must_match_train_by_name(tmp_path, capsys):
    """train a,b / val a,c: c would silently take b's label; refused, naming both differences."""
    _tree(tmp_path / "train", {"a": 2, "b": 2})
    _tree(tmp_path / "val", {"a": 2, "c": 2})
    with pytest.raises(DatasetError, match="only in train/: b; only in val/: c"):
        build_dataset("imagefolder", "val", root=tmp_path)
    from lowssl.evaluate.__main__ import main as evaluate_main

    argv = [
        "linear",
        "--random-init",
        "--arch",
        "resnet18",
        "--protocol",
        "fast_tiny",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(tmp_path),
        "--records-dir",
        str(tmp_path / "runs"),
        "--output-dir",
        str(tmp_path / "out"),
    ]
    assert evaluate_main(argv) == 2
    assert "val/ and train/ hold different classes" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


class _OneUnreadable(SyntheticImages):
    def load_image(self, index):
        if index == 2:
            raise DatasetError("cannot read image 2.png")
        return super().load_image(index)


def test_seeded_samples_depend_on_seed_epoch_and_index_only_and_leave_the_rng_alone():
    def draw(image):  # a "transform" that shows the torch and Python random numbers it gets
        return torch.rand(2), random.random()

    samples = SeededSamples(_OneUnreadable(4), draw, seed=7, skip_unreadable=True)
    torch.manual_seed(0)
    random.seed(0)
    expected = torch.rand(1).item(), random.random()
    torch.manual_seed(0)
    random.seed(0)
    (tensor, number), label = samples[(1, 3)]
    assert (torch.rand(1).item(), random.random()) == expected  # the training RNG did not move
    torch.manual_seed(123)  # another training RNG state: the same sample
    again = samples[(1, 3)][0]
    assert torch.equal(tensor, again[0]) and number == again[1] and label == 3
    assert not torch.equal(tensor, samples[(2, 3)][0][0]) and not torch.equal(tensor, samples[(1, 1)][0][0])
    assert samples[(0, 2)] is None
    with pytest.raises(DatasetError, match="2.png"):
        SeededSamples(_OneUnreadable(4), draw, seed=7)[(0, 2)]
