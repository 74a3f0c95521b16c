"""The embedded instance-segmentation set: Fashion-MNIST items pasted onto larger canvases, in COCO format.

Each canvas gets 1-4 items; an item is a Fashion-MNIST image resized by a random factor, cropped to
its foreground and pasted at a random position where it overlaps no earlier item, so each mask is
exactly the item's foreground (pixels above :data:`FOREGROUND_THRESHOLD`) and nothing covers it. Boxes
are the masks' tight boxes. Masks are stored as COCO RLE: items such as sandals have several
disconnected parts and holes, which RLE keeps exactly (train with INPUT.MASK_FORMAT "bitmask").
The train split draws from Fashion-MNIST's train images, val from its test images; everything is
deterministic for a seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from lowssl.data import FASHION_MNIST_CLASSES, FashionMNIST
from lowssl.io import atomic_write, atomic_write_text

FOREGROUND_THRESHOLD = 32  # Fashion-MNIST backgrounds are 0; this drops resize halos
SCALE_RANGE = (1.0, 2.5)  # items of 28-70 px on the default 128-px canvas
MAX_ITEMS = 4
PLACEMENT_TRIES = 20  # an item that finds no free spot after this many is left out
SPLITS = {"train": "train", "val": "test"}  # our split -> Fashion-MNIST split


@dataclass(frozen=True)
class FmnistDetSpec:
    train_images: int = 1000
    val_images: int = 200
    seed: int = 0
    canvas: int = 128

    def num_images(self, split: str) -> int:
        return self.train_images if split == "train" else self.val_images


def annotation_file(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def image_root(root: str | Path, split: str) -> Path:
    return Path(root) / split


def categories() -> list[dict]:
    return [
        {"id": index + 1, "name": name, "supercategory": "fashion"}
        for index, name in enumerate(FASHION_MNIST_CLASSES)
    ]


def _item(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(pixels, mask) of a Fashion-MNIST image resized to ``size``, cropped to its foreground."""
    pixels = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    mask = pixels > FOREGROUND_THRESHOLD
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return pixels[crop], mask[crop]


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    x, y, w, h = box
    return any(x < ox + ow and ox < x + w and y < oy + oh and oy < y + h for ox, oy, ow, oh in boxes)


def _canvas(images, labels, rng: np.random.Generator, canvas: int):
    """One canvas and its items as (category id, box, full-canvas mask)."""
    pixels = np.zeros((canvas, canvas), np.uint8)
    items, boxes = [], []
    for _ in range(rng.integers(1, MAX_ITEMS + 1)):
        index = int(rng.integers(len(images)))
        size = min(round(28 * rng.uniform(*SCALE_RANGE)), canvas)
        item = _item(images[index], size)
        if item is None:
            continue
        item_pixels, item_mask = item
        h, w = item_mask.shape
        for _ in range(PLACEMENT_TRIES):
            box = (int(rng.integers(canvas - w + 1)), int(rng.integers(canvas - h + 1)), w, h)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        x, y = box[:2]
        region = pixels[y : y + h, x : x + w]
        region[...] = np.maximum(region, item_pixels)
        mask = np.zeros((canvas, canvas), np.uint8)
        mask[y : y + h, x : x + w] = item_mask
        boxes.append(box)
        items.append((int(labels[index]) + 1, box, mask))
    return pixels, items


def generate(root: str | Path, spec: FmnistDetSpec = FmnistDetSpec(), fashion_mnist_root=None) -> Path:
    """Write ``root/{train,val}/*.png`` and ``root/annotations/instances_{train,val}.json``."""
    root = Path(root)
    for split_index, (split, source_split) in enumerate(SPLITS.items()):
        source = FashionMNIST(source_split, root=fashion_mnist_root, image_size=28)
        rng = np.random.default_rng([spec.seed, split_index])
        folder = image_root(root, split)
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, spec.num_images(split) + 1):
            pixels, items = _canvas(source.images, source.targets, rng, spec.canvas)
            file_name = f"{image_id:06d}.png"
            rgb = Image.fromarray(pixels, mode="L").convert("RGB")
            atomic_write(folder / file_name, lambda file, rgb=rgb: rgb.save(file, format="PNG"))
            images.append(
                {"id": image_id, "file_name": file_name, "width": spec.canvas, "height": spec.canvas}
            )
            for category_id, box, mask in items:
                rle = mask_util.encode(np.asfortranarray(mask))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": [float(v) for v in box],
                        "area": float(mask.sum()),
                        "iscrowd": 0,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    }
                )
        coco = {
            "info": {
                "description": "lowssl Fashion-MNIST instance segmentation",
                "split": split,
                **asdict(spec),
            },
            "images": images,
            "annotations": annotations,
            "categories": categories(),
        }
        atomic_write_text(annotation_file(root, split), json.dumps(coco))
    return root


def recorded_spec(root: str | Path) -> FmnistDetSpec | None:
    """The spec a generated set at ``root`` was made with, None if there is none."""
    path = annotation_file(root, "val")
    if not path.is_file() or not annotation_file(root, "train").is_file():
        return None
    info = json.loads(path.read_text()).get("info", {})
    try:
        return FmnistDetSpec(**{key: info[key] for key in asdict(FmnistDetSpec())})
    except KeyError:
        return None
