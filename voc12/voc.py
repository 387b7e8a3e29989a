"""PASCAL VOC 2012 constants, paths and image lists (SPEC section 0).

Everything VOC-specific lives in ``voc12/``; other packages import it from here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
NUM_FG_CLASSES = 20
NUM_CLASSES = 21  # background + 20 foreground classes, as in the masks
CAT_NAMES_WITH_BG = ("background", *CLASS_NAMES)
IGNORE_INDEX = 255

# ImageNet statistics used by the MXNet ResNet38 (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map, (n, 3) uint8: bit-interleaved class index."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def parse_list_line(line: str) -> str:
    """Image id of a list line: a bare id or a reference-style ``/JPEGImages/<id>.jpg`` path."""
    token = line.split()[0]
    return os.path.splitext(os.path.basename(token))[0]


def load_img_id_list(list_path: str | os.PathLike) -> list[str]:
    """Image ids of a list file, in order; blank lines are skipped."""
    path = Path(list_path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    with open(path) as f:
        ids = [parse_list_line(line) for line in f if line.strip()]
    if not ids:
        raise ValueError(f"image list {path} is empty")
    return ids


def jpeg_path(voc12_root: str | os.PathLike, image_id: str) -> Path:
    return Path(voc12_root) / "JPEGImages" / f"{image_id}.jpg"


def annotation_path(voc12_root: str | os.PathLike, image_id: str) -> Path:
    return Path(voc12_root) / "Annotations" / f"{image_id}.xml"


def segmentation_path(voc12_root: str | os.PathLike, image_id: str, aug: bool = False) -> Path:
    folder = "SegmentationClassAug" if aug else "SegmentationClass"
    return Path(voc12_root) / folder / f"{image_id}.png"
