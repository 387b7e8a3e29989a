"""PASCAL VOC 2012: its classes and the files of an id in the devkit (docs/method.md#data).

The descriptor every script reads is :class:`voc12.dataset.VOC12`; the dataset-independent
pieces (lists, the colour map) are in :mod:`tool.dataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

CLASS_NAMES = tuple(
    "aeroplane bicycle bird boat bottle bus car cat chair cow "
    "diningtable dog horse motorbike person pottedplant sheep sofa train tvmonitor".split()
)
NUM_FG_CLASSES = len(CLASS_NAMES)
NUM_CLASSES = NUM_FG_CLASSES + 1  # background + the 20 foreground classes, as in the masks


def jpeg_path(voc12_root: str | os.PathLike, image_id: str) -> Path:
    return Path(voc12_root) / "JPEGImages" / f"{image_id}.jpg"


def annotation_path(voc12_root: str | os.PathLike, image_id: str) -> Path:
    return Path(voc12_root) / "Annotations" / f"{image_id}.xml"


def segmentation_path(voc12_root: str | os.PathLike, image_id: str, aug: bool = False) -> Path:
    folder = "SegmentationClassAug" if aug else "SegmentationClass"
    return Path(voc12_root) / folder / f"{image_id}.png"
