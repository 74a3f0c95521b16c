"""Labelled subsets for 1% / 10% semi-supervised fine-tuning: read, check against a dataset, generate.

The paper fine-tunes on SimCLR's ImageNet 1% / 10% lists (App. A; docs/protocols.md, "Semi-supervised:
subset lists"). Two list formats are read:

- **image ids**, one per line: SimCLR's lists (``n01440764_10026.JPEG``: an ImageFolder file name) and
  the lists lowssl writes. An id is the image's file name for an ImageFolder tree and its training-set
  index for Fashion-MNIST and the synthetic set. Blank lines and lines starting with ``#`` are skipped;
  lowssl writes its provenance there as ``# key: value`` lines (dataset, fraction, seed, count).
- **the authors' variant** (SSLight ``data/imagenet_subsets/semi_1percent.txt``), one
  ``index,class_idx,wnid,filename`` line per image. The file name decides the image; ``class_idx`` and
  ``wnid`` must agree with the dataset's class of that file; ``index`` (the position in the authors'
  own image file) is only compared and reported.

The expected size of a subset is ``floor(fraction x training images)``: 12,811 and 128,116 for
ImageNet's 1,281,167 training images, the sizes of SimCLR's lists; 600 and 6,000 for Fashion-MNIST.
Generated subsets are class-balanced: every class gets ``count // classes`` images and a seeded
random choice of ``count % classes`` classes one more (SimCLR's 1% list: 12 or 13 per class).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from lowssl.errors import BadInput
from lowssl.io import atomic_write_text, sha256_file

SUBSETS = {"1pct": 0.01, "10pct": 0.1}
IMAGENET_TRAIN_IMAGES = 1_281_167
SIMCLR_LISTS_URL = "https://github.com/google-research/simclr/tree/master/imagenet_subsets"
LIST_FORMAT_HELP = (
    "one image id per line (ImageFolder: the file name, e.g. n01440764_10026.JPEG; Fashion-MNIST and "
    "synthetic: the training-set index); '#' lines are comments"
)


class SubsetError(BadInput, ValueError):
    """A subset list does not fit the dataset; the message names the list and the problem."""


@dataclass
class LabelSubset:
    """The labelled images of one subset list, as sorted indices into the training set."""

    indices: np.ndarray
    label: str  # "1pct" or "10pct"
    path: Path
    sha256: str
    list_format: str  # "ids" or "authors"
    per_class: dict[str, int]  # class name -> labelled images
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        counts = list(self.per_class.values())
        return {
            "subset": self.label,
            "subset_file": str(self.path),
            "subset_sha256": self.sha256,
            "subset_format": self.list_format,
            "labelled_images": len(self.indices),
            "classes_labelled": sum(c > 0 for c in counts),
            "per_class_min": min(counts),
            "per_class_max": max(counts),
        }

    def report(self) -> str:
        histogram = Counter(self.per_class.values())
        spread = ", ".join(
            f"{classes} classes x {n}" for n, classes in sorted(histogram.items(), reverse=True)
        )
        head = (
            f"{self.path}: {len(self.indices):,} labelled images ({self.label}, {self.list_format} format), "
            f"sha256 {self.sha256[:16]}; per class: {spread}"
        )
        return "\n".join([head] + [f"note: {note}" for note in self.notes])


def expected_count(train_images: int, fraction: float) -> int:
    """floor(fraction x train_images), exactly (no float rounding): SimCLR's sizes on ImageNet."""
    return math.floor(Fraction(str(fraction)) * train_images)


def image_ids(dataset) -> list[str]:
    """Each training image's id: the file name for an ImageFolder, the index otherwise."""
    if hasattr(dataset, "samples"):
        return [Path(path).name for path, _ in dataset.samples]
    return [str(index) for index in range(len(dataset))]


def subset_label(fraction: float) -> str:
    for label, value in SUBSETS.items():
        if math.isclose(value, fraction):
            return label
    raise SubsetError(f"fraction {fraction} is neither 1% nor 10%; allowed values: 0.01, 0.1")


def make_subset(targets, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced subset of floor(fraction x N) images, deterministic for a seed."""
    targets = np.asarray(targets)
    classes = np.unique(targets)
    count = expected_count(len(targets), fraction)
    if count < len(classes):
        raise SubsetError(
            f"{fraction:g} of {len(targets)} images is {count}, fewer than one per class ({len(classes)} classes)"
        )
    rng = np.random.default_rng(seed)
    quota = np.full(len(classes), count // len(classes))
    quota[rng.choice(len(classes), count % len(classes), replace=False)] += 1
    chosen = []
    for label, wanted in zip(classes, quota, strict=True):
        members = np.flatnonzero(targets == label)
        if len(members) < wanted:
            raise SubsetError(
                f"class {label} has {len(members)} images, fewer than the {wanted} a balanced subset needs"
            )
        chosen.append(rng.choice(members, size=wanted, replace=False))
    return np.sort(np.concatenate(chosen))


def write_subset(path: str | Path, dataset, dataset_name: str, fraction: float, seed: int) -> Path:
    """Generate a balanced subset of ``dataset`` and write it as a list lowssl reads back:
    ``# key: value`` provenance lines, then one image id per line."""
    indices = make_subset(dataset.targets, fraction, seed)
    ids = image_ids(dataset)
    header = [
        f"# lowssl label subset: {LIST_FORMAT_HELP}",
        f"# dataset: {dataset_name}",
        f"# fraction: {fraction:g}",
        f"# seed: {seed}",
        f"# count: {len(indices)}",
    ]
    return atomic_write_text(path, "\n".join(header + [ids[i] for i in indices]) + "\n")


def subset_path(spec: str, dataset, dataset_name: str, folder: Path, seed: int) -> tuple[Path, bool]:
    """(list file, whether it must be generated) for ``--subset 1pct|10pct|FILE``.

    ``1pct`` / ``10pct`` mean a generated balanced subset, except on ImageNet, whose subsets are
    SimCLR's lists (App. A): there the list must be given.
    """
    if spec not in SUBSETS:
        return Path(spec), False
    if len(dataset) == IMAGENET_TRAIN_IMAGES:
        name = {"1pct": "1percent.txt", "10pct": "10percent.txt"}[spec]
        raise SubsetError(
            f"this training set has ImageNet's {IMAGENET_TRAIN_IMAGES:,} images: the paper's {spec} subset is "
            f"SimCLR's list (App. A), not a generated one. Download {name} from {SIMCLR_LISTS_URL} "
            f"and pass --subset /path/to/{name}"
        )
    path = folder / f"subset_{dataset_name}_{spec}_seed{seed}.txt"
    return path, not path.exists()


@dataclass
class _ListFile:
    list_format: str
    ids: list[str]  # file names or indices, in list order
    metadata: dict[str, str]
    # (index, class_idx, wnid, line number) of each line, authors' format only
    authors_rows: list[tuple[int, int, str, int]]


def _read_list(path: Path) -> _ListFile:
    if not path.is_file():
        raise SubsetError(f"subset list {path} does not exist")
    metadata: dict[str, str] = {}
    entries: list[tuple[int, str]] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                metadata[key.strip()] = value.strip()
        elif line:
            entries.append((number, line))
    if not entries:
        raise SubsetError(f"subset list {path} names no images; expected {LIST_FORMAT_HELP}")
    if "," not in entries[0][1]:
        bad = next(((n, line) for n, line in entries if "," in line or " " in line), None)
        if bad:
            raise SubsetError(f"subset list {path}, line {bad[0]}: {bad[1]!r} is not one image id")
        return _ListFile("ids", [line for _, line in entries], metadata, [])
    ids, rows = [], []
    for number, line in entries:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not (parts[0].isdigit() and parts[1].isdigit()):
            raise SubsetError(
                f"subset list {path}, line {number}: {line!r} is not 'index,class_idx,wnid,filename'"
            )
        ids.append(Path(parts[3]).name)
        rows.append((int(parts[0]), int(parts[1]), parts[2], number))
    return _ListFile("authors", ids, metadata, rows)


def _first(items: list, limit: int = 10) -> str:
    return ", ".join(map(str, items[:limit])) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def _fraction(listed: _ListFile, path: Path, fraction: float | None, train_images: int, count: int) -> float:
    """The subset's fraction: given, else from the list's header, else from its size."""
    if fraction is not None:
        return fraction
    if "fraction" in listed.metadata:
        return float(listed.metadata["fraction"])
    for value in SUBSETS.values():
        if count == expected_count(train_images, value):
            return value
    sizes = ", ".join(f"{expected_count(train_images, v):,} ({label})" for label, v in SUBSETS.items())
    raise SubsetError(
        f"subset list {path} names {count:,} images; a subset of this {train_images:,}-image training set "
        f"has {sizes}. Pass --fraction 0.01 or 0.1 to say which subset it is (and --expected-count to "
        "accept another size)"
    )


def load_subset(
    path: str | Path, dataset, fraction: float | None = None, expected: int | None = None
) -> LabelSubset:
    """Read a list (either format) and check it against ``dataset`` (its training split).

    Errors name the problem: an id the dataset lacks, an id listed twice, an authors' line whose class
    disagrees with the dataset, or a size other than ``expected`` (default floor(fraction x N)).
    """
    path = Path(path)
    listed = _read_list(path)
    ids = image_ids(dataset)
    position: dict[str, int] = {}
    ambiguous: set[str] = set()
    for index, image_id in enumerate(ids):
        if image_id in position:
            ambiguous.add(image_id)
        position[image_id] = index

    duplicates = [image_id for image_id, n in Counter(listed.ids).items() if n > 1]
    if duplicates:
        raise SubsetError(
            f"subset list {path} names {len(duplicates)} images more than once: {_first(duplicates)}"
        )
    missing = [image_id for image_id in listed.ids if image_id not in position]
    if missing:
        raise SubsetError(
            f"subset list {path}: {len(missing)} of its {len(listed.ids):,} images are not in the dataset's "
            f"training split ({len(ids):,} images): {_first(missing)}. Is it the list for this dataset?"
        )
    clashing = [image_id for image_id in listed.ids if image_id in ambiguous]
    if clashing:
        raise SubsetError(
            f"subset list {path}: file names found in more than one class folder: {_first(clashing)}"
        )
    indices = np.array([position[image_id] for image_id in listed.ids], dtype=np.int64)

    targets = np.asarray(dataset.targets)
    classes = list(dataset.classes)
    notes = []
    if listed.list_format == "authors":
        wrong = [
            f"line {line}: {image_id} is class {targets[i]} ({classes[targets[i]]}), the list says "
            f"{class_idx} ({wnid})"
            for (_, class_idx, wnid, line), image_id, i in zip(
                listed.authors_rows, listed.ids, indices, strict=True
            )
            if class_idx != targets[i] or wnid != classes[targets[i]]
        ]
        if wrong:
            raise SubsetError(
                f"subset list {path}: {len(wrong)} lines disagree with the dataset's classes: {_first(wrong, 3)}"
            )
        moved = sum(row[0] != i for row, i in zip(listed.authors_rows, indices, strict=True))
        if moved:
            notes.append(
                f"{moved} of the list's indices differ from this dataset's order (the file name decides)"
            )

    fraction = _fraction(listed, path, fraction, len(ids), len(indices))
    label = subset_label(fraction)
    wanted = expected if expected is not None else expected_count(len(ids), fraction)
    if len(indices) != wanted:
        how = "given" if expected is not None else f"floor({fraction:g} x {len(ids):,} training images)"
        raise SubsetError(
            f"subset list {path} names {len(indices):,} images; the {label} subset should have {wanted:,} ({how}). "
            "Pass --expected-count to accept another size"
        )
    per_class = dict.fromkeys(classes, 0)
    for label_index, n in Counter(targets[indices].tolist()).items():
        per_class[classes[label_index]] = n
    empty = [name for name, n in per_class.items() if n == 0]
    if empty:
        notes.append(f"{len(empty)} classes have no labelled image: {_first(empty)}")
    return LabelSubset(np.sort(indices), label, path, sha256_file(path), listed.list_format, per_class, notes)
