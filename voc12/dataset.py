"""The PASCAL VOC 2012 descriptor, ``--dataset voc12`` (the default; docs/datasets.md#pascal-voc-2012).

Images ``JPEGImages/<id>.jpg``, masks ``SegmentationClass/<id>.png``, image-level labels from the shipped
``voc12/cls_labels.npz`` or the XML annotations (:mod:`voc12.make_cls_labels`). The scripts' published
defaults are this dataset's, so it changes none of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tool.cli import MissingFileError
from tool.dataset import DatasetInfo
from voc12.make_cls_labels import load_or_build_cls_labels
from voc12.voc import CLASS_NAMES, jpeg_path, segmentation_path

VOC12_DIR = Path(__file__).resolve().parent


class VOC12(DatasetInfo):
    name = "voc12"
    class_names = CLASS_NAMES
    default_root = "VOC2012"

    def image_path(self, image_id: str) -> Path:
        return jpeg_path(self.root, image_id)

    def mask_path(self, image_id: str) -> Path:
        return segmentation_path(self.root, image_id)

    def check_root(self) -> None:
        if not (self.root / "JPEGImages").is_dir():
            hint = " (a COCO-2014 folder: --dataset coco14)" if (self.root / "train2014").is_dir() else ""
            raise MissingFileError(f"--dataset_root {self.root}: no JPEGImages/ folder, not a VOC2012 devkit{hint}")

    def load_labels(self, ids: Iterable[str], cls_labels: str | os.PathLike | None) -> dict[str, np.ndarray]:
        """From ``cls_labels`` (default: the shipped ``voc12/cls_labels.npz``), ids it lacks from the XML."""
        return load_or_build_cls_labels(self.root, ids, cls_labels or VOC12_DIR / "cls_labels.npz")
