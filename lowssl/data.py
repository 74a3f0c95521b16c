"""Datasets every stage reads: Fashion-MNIST (the embedded default), ImageFolder trees, held-out
splits and a tiny synthetic set for tests. Each is registered by name in :data:`DATASETS`
(``@register_dataset``), the names ``--dataset`` and the pre-training config's ``data.dataset`` take.

All datasets yield ``(PIL RGB image, int label)`` before their ``transform``, so the same view
sampler and evaluation transforms work on each of them. Each has a ``fingerprint``: a short hash of its
images and labels as read, computed once per dataset object, which keys whatever is cached or stored
from them (the evaluation's feature cache and stored results), so a changed dataset is never answered
from an old one's numbers.

Fashion-MNIST is real data shipped offline by Debian's ``dataset-fashion-mnist`` package
(``make install`` installs it where apt is available). Its 28x28 grey images are served as RGB
(the grey channel repeated three times) upsampled with bicubic interpolation to ``image_size``
(default 32, a size the stride-32 CNNs can take and the ViTs' 16-px patches divide).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import struct
import warnings
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, get_worker_info

from lowssl.errors import BadInput
from lowssl.registry import Registry
from lowssl.rng import sample_seed

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "LOWSSL_FASHION_MNIST"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetError(BadInput, RuntimeError):
    """Bad or missing data; the message names the file or folder and the fix."""


def arrays_fingerprint(*arrays: np.ndarray) -> str:
    """Short sha256 of in-memory arrays' bytes (with their shapes and dtypes): all of Fashion-MNIST's
    train images and labels in ~0.05 s on one core (sha256 has CPU instructions; blake2b took 0.13 s)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzip or plain) of unsigned bytes, as LeCun's MNIST format defines it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            zero, dtype_code, ndim = struct.unpack(">HBB", file.read(4))
            if zero != 0 or dtype_code != 0x08:
                raise DatasetError(f"{path} is not an idx file of unsigned bytes")
            shape = struct.unpack(f">{ndim}I", file.read(4 * ndim))
            data = np.frombuffer(file.read(), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as error:
        raise DatasetError(f"cannot read idx file {path}: {error}") from error
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"idx file {path} is truncated: expected {shape}, got {data.size} values")
    return data.reshape(shape)


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """Folder with the four idx .gz files: ``root``, ``$LOWSSL_FASHION_MNIST``, Debian's, or a download."""

    def complete(folder) -> bool:
        return all((Path(folder) / name).is_file() for pair in _IDX_FILES.values() for name in pair)

    if root is not None:
        if not complete(root):
            raise DatasetError(
                f"Fashion-MNIST idx files not found in {root} (expected {_IDX_FILES['train'][0]}, ...)"
            )
        return Path(root)
    for candidate in (os.environ.get(FASHION_MNIST_ENV), DEBIAN_FASHION_MNIST):
        if candidate and complete(candidate):
            return Path(candidate)
    download_dir = Path.home() / ".cache" / "lowssl" / "fashion-mnist"
    warnings.warn(
        f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST} is missing); "
        f"downloading Fashion-MNIST with torchvision into {download_dir}. Install it offline with "
        "`apt-get install dataset-fashion-mnist` or set $LOWSSL_FASHION_MNIST.",
        stacklevel=2,
    )
    from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

    try:
        TorchvisionFashionMNIST(download_dir, download=True)
    except Exception as error:  # noqa: BLE001 - any network failure gets the same advice
        raise DatasetError(
            f"Fashion-MNIST is not installed and the download failed ({error}). "
            "Run `make install` (it installs Debian's dataset-fashion-mnist) or set $LOWSSL_FASHION_MNIST "
            "to a folder holding the four idx .gz files."
        ) from error
    return download_dir / "FashionMNIST" / "raw"


class FashionMNIST(Dataset):
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000), as RGB PIL images of ``image_size``."""

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        split: str = "train",
        root: str | Path | None = None,
        image_size: int = 32,
        transform: Callable | None = None,
    ) -> None:
        if split not in _IDX_FILES:
            raise DatasetError(f"Fashion-MNIST split '{split}' does not exist; allowed values: train, test")
        folder = fashion_mnist_root(root)
        images_file, labels_file = _IDX_FILES[split]
        self.images = read_idx(folder / images_file)
        self.targets = read_idx(folder / labels_file).astype(np.int64)
        if len(self.images) != len(self.targets):
            raise DatasetError(f"{folder}: {len(self.images)} images but {len(self.targets)} labels")
        self.image_size = image_size
        self.transform = transform

    @cached_property
    def fingerprint(self) -> str:
        """The decoded pixels and labels themselves (not the files' stat: exact, and ~0.05 s) and the
        size they are upsampled to."""
        return arrays_fingerprint(self.images, self.targets, np.array(self.image_size))

    def __len__(self) -> int:
        return len(self.targets)

    def load_image(self, index: int) -> Image.Image:
        image = Image.fromarray(self.images[index], mode="L")
        if self.image_size != image.width:
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return image.convert("RGB")

    def __getitem__(self, index: int):
        image = self.load_image(index)
        return (self.transform(image) if self.transform else image), int(self.targets[index])


_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _rgb(image: Image.Image, path: Path) -> Image.Image:
    """``image`` as 8-bit RGB. PIL's ``convert`` clips 16-bit grey (a 16-bit PNG opens as "I;16") at
    255, leaving two values; it is scaled instead, keeping the top byte (v >> 8), as torchvision's
    ``ToDtype(torch.uint8)`` does for a uint16 image and libpng's ``png_set_strip_16``: it inverts the
    usual 8 -> 16-bit widening (v * 257) exactly. 32-bit integer or float pixels have no range to scale
    from, so they are refused."""
    if image.mode in _16_BIT_MODES:
        return Image.fromarray((np.asarray(image) >> 8).astype(np.uint8)).convert("RGB")
    if image.mode in ("I", "F"):
        raise DatasetError(
            f"cannot read image {path}: its pixels are 32-bit (PIL mode {image.mode}), with no fixed "
            "range to scale to 8 bits; save it as an 8- or 16-bit image"
        )
    return image.convert("RGB")


class ImageFolder(Dataset):
    """An ImageNet-style tree ``<root>/<class>/<image>``, checked up front, errors naming the file."""

    extensions = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

    def __init__(self, root: str | Path, transform: Callable | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist; expected <root>/<class>/<image> files")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise DatasetError(
                f"image folder {root} has no class sub-folders; expected <root>/<class>/<image>"
            )
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in self.extensions)
            if not files:
                raise DatasetError(
                    f"class folder {root / name} holds no images ({', '.join(self.extensions)}); "
                    "remove it or add its images"
                )
            self.samples += [(path, label) for path in files]
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)
        self.root = root
        self.transform = transform

    @cached_property
    def fingerprint(self) -> str:
        """Every image's class (name and label), file name, size, mtime_ns and inode number, in order.

        Stat, not content: hashing every byte of an ImageNet-size tree would cost more than the
        evaluation; this costs ~16 us an image (20,000 in 0.33 s on the shared 2-core machine).
        Class + name catch a renamed class or image, size + mtime_ns an edit, the inode a swap or a
        replacement by another file even where timestamps are too coarse to tell the files apart
        (whole seconds on some file systems). Missed: an in-place edit that keeps the size and
        restores the mtime (``touch -r``); --no-cache recomputes.
        """
        digest = hashlib.sha256()
        for path, label in self.samples:
            try:
                stat = os.stat(path)
            except OSError as error:
                raise DatasetError(f"cannot read image {path}: {error}") from error
            name = f"{self.classes[label]}/{path.name}"
            digest.update(f"{name}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\n".encode())
        return digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                return _rgb(image, path)
        except (OSError, UnidentifiedImageError) as error:
            raise DatasetError(f"cannot read image {path}: {error}") from error

    def __getitem__(self, index: int):
        image = self.load_image(index)
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class SyntheticImages(Dataset):
    """A tiny, deterministic labelled image set for tests: class k is a blob at a class-specific place."""

    def __init__(
        self, size: int = 64, num_classes: int = 4, image_size: int = 32, seed: int = 0, transform=None
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = (torch.arange(size) % num_classes).numpy()
        noise = torch.randint(
            0, 64, (size, image_size, image_size, 3), generator=generator, dtype=torch.uint8
        )
        self.images = noise.numpy().copy()
        step = max(image_size // (num_classes + 1), 1)
        for index, label in enumerate(self.targets):
            top = left = int(label) * step
            self.images[index, top : top + step * 2, left : left + step * 2] = 255
        self.classes = [f"class_{k}" for k in range(num_classes)]
        self.transform = transform

    @cached_property
    def fingerprint(self) -> str:
        return arrays_fingerprint(self.images, self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index], mode="RGB")

    def __getitem__(self, index: int):
        image = self.load_image(index)
        return (self.transform(image) if self.transform else image), int(self.targets[index])


#: The paper's ablations report linear accuracy on 50 images per class held out of train (Sec. 3.2).
PAPER_HELD_OUT_PER_CLASS = 50


def add_held_out_arguments(parser, purpose: str) -> None:
    """``--held-out`` / ``--held-out-per-class N``: evaluate on images held out of train, not val."""
    parser.add_argument(
        "--held-out",
        action="store_true",
        help=f"evaluate on images per class held out of train, not val ({purpose})",
    )
    parser.add_argument(
        "--held-out-per-class",
        type=int,
        default=PAPER_HELD_OUT_PER_CLASS,
        metavar="N",
        help=f"images per class held out with --held-out (default {PAPER_HELD_OUT_PER_CLASS}, the paper's)",
    )


def held_out_split(
    targets, per_class: int = PAPER_HELD_OUT_PER_CLASS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into (train, held-out) with ``per_class`` held-out images per class.

    The paper's ablations (Sec. 3.2, "Setting") report linear accuracy on 50 images per class held
    out from ImageNet's training set. Deterministic for a given seed; indices are sorted.
    """
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        if len(members) <= per_class:
            raise DatasetError(
                f"class {label} has {len(members)} images, not more than the {per_class} to hold out; "
                "lower per_class"
            )
        held_out.append(rng.choice(members, size=per_class, replace=False))
    held = np.sort(np.concatenate(held_out))
    mask = np.ones(len(targets), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one, e.g. under taskset or a
    SLURM allocation; else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(wanted: int = 4) -> int:
    """Data-loading processes per process: ``wanted``, at most the CPUs this process may use
    (more only makes PyTorch's DataLoader warn and the processes contend)."""
    return max(0, min(wanted, usable_cpus()))


#: Every dataset by name: ``builder(split, root, image_size, transform)`` for split "train" or "val".
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator: the builder of dataset ``name`` (the names ``--dataset`` and ``data.dataset`` take)."""
    return lambda builder: DATASETS.register(name, builder)


@register_dataset("fashion-mnist")
def _fashion_mnist(split: str, root, image_size: int, transform) -> Dataset:
    return FashionMNIST("train" if split == "train" else "test", root, image_size, transform)


@register_dataset("imagefolder")
def _image_folder(split: str, root, image_size: int, transform) -> Dataset:
    if root is None:
        raise DatasetError("dataset 'imagefolder' needs a root: the folder holding train/ and val/")
    images = ImageFolder(Path(root) / split, transform)
    if split == "val" and (Path(root) / "train").is_dir():
        _check_same_classes(Path(root), images.classes)
    return images


@register_dataset("synthetic")
def _synthetic(split: str, root, image_size: int, transform) -> Dataset:
    return SyntheticImages(
        64 if split == "train" else 32,
        image_size=image_size,
        seed=0 if split == "train" else 1,
        transform=transform,
    )


def build_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    image_size: int = 32,
    transform: Callable | None = None,
) -> Dataset:
    """A dataset by name. ``split`` is ``train`` or ``val`` (Fashion-MNIST's ``val`` is its test set)."""
    if split not in ("train", "val"):
        raise DatasetError(f"split '{split}' is not allowed; allowed values: train, val")
    if name not in DATASETS:
        raise DatasetError(DATASETS.unknown(name))
    return DATASETS.get(name)(split, root, image_size, transform)


def _check_same_classes(root: Path, val_classes: list[str]) -> None:
    """Labels are class-folder indices, so val/ must hold exactly train/'s classes: otherwise a val
    class silently takes the label of whichever train class sorts at its place."""
    train_classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DatasetError(
            f"image folder {root}: val/ and train/ hold different classes (only in train/: "
            f"{', '.join(only_train[:10]) or 'none'}; only in val/: {', '.join(only_val[:10]) or 'none'}), "
            "so labels would not match; give val/ and train/ the same class folders"
        )


class IndexedImages(Dataset):
    """The images of ``base`` at ``indices`` (keeps ``load_image`` and ``targets``)."""

    def __init__(self, base: Dataset, indices, transform: Callable | None = None) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(base.targets)[self.indices]
        self.classes = base.classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(int(self.indices[index]))

    def __getitem__(self, index: int):
        image = self.load_image(index)
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class SeededSamples(Dataset):
    """Items are ``(epoch, index)`` pairs (from an epoch sampler); returns ``(transform(image), label)``
    with the transform's randomness (torch's and Python's) seeded by (seed, epoch, index)
    (:func:`lowssl.rng.sample_seed`), or ``None`` for an unreadable image when ``skip_unreadable``.

    So a sample's crop does not depend on the worker or process that loads it, and a run resumed in
    the middle of an epoch sees exactly the crops an uninterrupted run would have seen (pre-training's
    multi-crop views, semisup's fine-tuning crops).
    """

    def __init__(
        self, images: Dataset, transform: Callable, seed: int, skip_unreadable: bool = False
    ) -> None:
        self.images = images
        self.transform = transform
        self.seed = seed
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        try:
            image = self.images.load_image(index)
        except DatasetError as error:
            if self.skip_unreadable:
                print(f"warning: skipping unreadable image: {error}", flush=True)
                return None
            raise
        label = int(self.images.targets[index])
        if get_worker_info() is not None:  # a loader worker: its RNG and its one thread are its own
            return self._seeded(epoch, index, image), label
        # In the main process (num_workers=0) keep the training RNG untouched, and run the small
        # per-image ops on one thread: torch's multi-threading makes them many times slower.
        threads, python_rng = torch.get_num_threads(), random.getstate()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                return self._seeded(epoch, index, image), label
        finally:
            torch.set_num_threads(threads)
            random.setstate(python_rng)

    def _seeded(self, epoch: int, index: int, image: Image.Image):
        seed = sample_seed(self.seed, epoch, index)
        torch.manual_seed(seed)
        random.seed(seed)
        return self.transform(image)
