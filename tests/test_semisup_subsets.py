"""Label subsets: generation, the SimCLR and authors' list formats, and clear errors on wrong lists."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lowssl.data import FashionMNIST, ImageFolder
from lowssl.semisup.subsets import (
    IMAGENET_TRAIN_IMAGES,
    SubsetError,
    expected_count,
    load_subset,
    make_subset,
    subset_path,
    write_subset,
)

WNIDS = ("n01440764", "n01443537", "n01484850")


@pytest.fixture(scope="module")
def fashion_train():
    return FashionMNIST("train")


@pytest.fixture
def fake_imagenet(tmp_path):
    """3 classes x 10 images named like ImageNet training files (train/<wnid>/<wnid>_<n>.JPEG)."""
    for wnid in WNIDS:
        (tmp_path / "train" / wnid).mkdir(parents=True)
        for n in range(10):
            Image.new("RGB", (8, 8), (n * 20, 0, 0)).save(
                tmp_path / "train" / wnid / f"{wnid}_{1000 + n}.JPEG", "PNG"
            )
    return ImageFolder(tmp_path / "train")


def test_imagenet_sizes_are_simclr_list_sizes():
    assert expected_count(IMAGENET_TRAIN_IMAGES, 0.01) == 12_811
    assert expected_count(IMAGENET_TRAIN_IMAGES, 0.1) == 128_116
    assert expected_count(60_000, 0.01) == 600 and expected_count(60_000, 0.1) == 6_000


@pytest.mark.parametrize(("fraction", "per_class"), [(0.01, 60), (0.1, 600)])
def test_fashion_mnist_subsets_are_deterministic_and_balanced(fashion_train, fraction, per_class):
    subset = make_subset(fashion_train.targets, fraction, seed=0)
    assert np.array_equal(subset, make_subset(fashion_train.targets, fraction, seed=0))
    assert np.bincount(fashion_train.targets[subset]).tolist() == [per_class] * 10
    assert len(np.unique(subset)) == len(subset)
    other = make_subset(fashion_train.targets, fraction, seed=1)
    assert not np.array_equal(subset, other)


def test_uneven_class_counts_differ_by_at_most_one_image():
    targets = np.repeat(np.arange(7), [150, 160, 170, 180, 190, 200, 210])  # 1260 images, 7 classes
    counts = np.bincount(targets[make_subset(targets, 0.1, seed=3)])
    assert counts.sum() == 126 and counts.max() - counts.min() == 0  # 126 = 7 x 18
    counts = np.bincount(targets[make_subset(targets[:-4], 0.1, seed=3)])
    assert counts.sum() == 125 and set(counts.tolist()) == {17, 18}  # SimCLR-like 12 / 13 spread


def test_written_list_reads_back_to_the_same_images(tmp_path, fashion_train):
    path = write_subset(tmp_path / "s.txt", fashion_train, "fashion-mnist", 0.01, seed=0)
    subset = load_subset(path, fashion_train)
    assert subset.label == "1pct" and subset.list_format == "ids"  # fraction from the '# fraction:' header
    assert np.array_equal(subset.indices, make_subset(fashion_train.targets, 0.01, seed=0))
    assert set(subset.per_class.values()) == {60}
    assert path.read_text().splitlines()[5:8] == [str(i) for i in subset.indices[:3]]


def test_simclr_and_authors_lists_name_the_same_images(tmp_path, fake_imagenet):
    chosen = [f"{WNIDS[2]}_1004.JPEG", f"{WNIDS[0]}_1007.JPEG", f"{WNIDS[1]}_1000.JPEG"]
    simclr = tmp_path / "10percent.txt"
    simclr.write_text("\n".join(chosen) + "\n")
    # SSLight's semi_1percent.txt layout: index,class_idx,wnid,filename (index: position in the image list)
    authors = tmp_path / "semi_10percent.txt"
    authors.write_text(
        "\n".join(
            f"{c * 10 + int(name[-9:-5]) - 1000},{c},{WNIDS[c]},{name}"
            for name in chosen
            for c in [WNIDS.index(name[:9])]
        )
        + "\n"
    )
    from_simclr = load_subset(simclr, fake_imagenet)  # 3 = floor(10% x 30): the 10% subset
    from_authors = load_subset(authors, fake_imagenet)
    assert from_simclr.label == from_authors.label == "10pct"
    assert from_authors.list_format == "authors" and not from_authors.notes
    assert np.array_equal(from_simclr.indices, from_authors.indices)
    assert [fake_imagenet.samples[i][0].name for i in from_simclr.indices] == sorted(
        chosen, key=lambda n: n[:9]
    )
    assert from_simclr.per_class == dict.fromkeys(WNIDS, 1)


def test_wrong_lists_fail_naming_the_problem(tmp_path, fake_imagenet):
    path = tmp_path / "list.txt"
    path.write_text(f"{WNIDS[0]}_1001.JPEG\n{WNIDS[1]}_9999.JPEG\n{WNIDS[2]}_1002.JPEG\n")
    with pytest.raises(SubsetError, match=rf"1 of its 3 images are not in .*{WNIDS[1]}_9999\.JPEG"):
        load_subset(path, fake_imagenet)
    path.write_text(f"{WNIDS[0]}_1001.JPEG\n{WNIDS[1]}_1001.JPEG\n")
    with pytest.raises(SubsetError, match=r"names 2 images.* --fraction"):
        load_subset(path, fake_imagenet)  # neither 1% (0) nor 10% (3) of 30
    with pytest.raises(SubsetError, match=r"names 2 images; the 10pct subset should have 3"):
        load_subset(path, fake_imagenet, fraction=0.1)
    assert len(load_subset(path, fake_imagenet, fraction=0.1, expected=2).indices) == 2
    path.write_text(f"{WNIDS[0]}_1001.JPEG\n{WNIDS[0]}_1001.JPEG\n{WNIDS[1]}_1001.JPEG\n")
    with pytest.raises(SubsetError, match="more than once"):
        load_subset(path, fake_imagenet)
    path.write_text(
        f"0,0,{WNIDS[0]},{WNIDS[0]}_1000.JPEG\n1,1,{WNIDS[1]},{WNIDS[0]}_1001.JPEG\n"
        f"2,2,{WNIDS[2]},{WNIDS[2]}_1000.JPEG\n"
    )
    with pytest.raises(SubsetError, match=rf"line 2: {WNIDS[0]}_1001\.JPEG is class 0"):
        load_subset(path, fake_imagenet)
    with pytest.raises(SubsetError, match="does not exist"):
        load_subset(tmp_path / "absent.txt", fake_imagenet)


def test_imagenet_needs_simclr_lists_not_generated_ones(tmp_path):
    class ImageNetSized:
        def __len__(self):
            return IMAGENET_TRAIN_IMAGES

    with pytest.raises(SubsetError, match="SimCLR's list.*1percent.txt"):
        subset_path("1pct", ImageNetSized(), "imagefolder", tmp_path, seed=0)
    given = subset_path("/lists/1percent.txt", ImageNetSized(), "imagefolder", tmp_path, seed=0)
    assert given == (Path("/lists/1percent.txt"), False)
