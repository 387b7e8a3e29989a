"""The COCO-2014 descriptor, ``--dataset coco14`` (docs/datasets.md#coco-2014).

Layout (``--dataset_root``): ``train2014/`` and ``val2014/`` with the JPEGs (``COCO_train2014_000000000009.jpg``),
``annotations/instances_{train,val}2014.json``, and what ``python -m coco14.prepare`` writes from them:
``SegmentationClass/{train2014,val2014}/<id>.png`` (contiguous class indices 0..80) and, in this folder,
``cls_labels.npz`` (80-d image-level labels). Ids are file stems, strings; the split is the middle token.

The 80 categories keep COCO's id order; ids 1..90 map to mask indices 1..80 (:data:`CATEGORY_TO_INDEX`).
Flag defaults that differ from VOC's follow the released COCO recipes of the method's lineage
(:data:`SCRIPT_DEFAULTS`; docs/datasets.md#coco-2014 says where each value comes from).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tool.cli import InputError, MissingFileError
from tool.dataset import DatasetInfo, pick_labels
from tool.fileio import load_cls_labels

COCO14_DIR = Path(__file__).resolve().parent
# (COCO category id, name), in id order; ids 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 do not exist.
_CATEGORY_TABLE = """
1 person  2 bicycle  3 car  4 motorcycle  5 airplane  6 bus  7 train  8 truck  9 boat  10 traffic_light
11 fire_hydrant  13 stop_sign  14 parking_meter  15 bench  16 bird  17 cat  18 dog  19 horse  20 sheep
21 cow  22 elephant  23 bear  24 zebra  25 giraffe  27 backpack  28 umbrella  31 handbag  32 tie  33 suitcase
34 frisbee  35 skis  36 snowboard  37 sports_ball  38 kite  39 baseball_bat  40 baseball_glove  41 skateboard
42 surfboard  43 tennis_racket  44 bottle  46 wine_glass  47 cup  48 fork  49 knife  50 spoon  51 bowl
52 banana  53 apple  54 sandwich  55 orange  56 broccoli  57 carrot  58 hot_dog  59 pizza  60 donut  61 cake
62 chair  63 couch  64 potted_plant  65 bed  67 dining_table  70 toilet  72 tv  73 laptop  74 mouse
75 remote  76 keyboard  77 cell_phone  78 microwave  79 oven  80 toaster  81 sink  82 refrigerator  84 book
85 clock  86 vase  87 scissors  88 teddy_bear  89 hair_drier  90 toothbrush
"""
_TOKENS = _CATEGORY_TABLE.split()
CATEGORIES = tuple(zip(map(int, _TOKENS[::2]), _TOKENS[1::2], strict=True))
CLASS_NAMES = tuple(name for _, name in CATEGORIES)
CATEGORY_TO_INDEX = {cat_id: index for index, (cat_id, _) in enumerate(CATEGORIES, start=1)}  # mask index
SPLITS = ("train2014", "val2014")
_ID = re.compile(r"COCO_(?P<split>[a-z]+[0-9]{4})_[0-9]+")

TRAIN_LIST, VAL_LIST, VAL_PART_LIST = (COCO14_DIR / f"{name}.txt" for name in ("train", "val", "val_part"))
LABELS = COCO14_DIR / "cls_labels.npz"
# Where COCO's defaults differ from VOC's published ones (docs/datasets.md#coco-2014). Lists: the images with at
# least one annotation (ToCo, AFA, CLIP-ES); val_part, ToCo's 5,000 val images, for validation during training.
# Background scores: VOC's 0.2 scaled by ReCAM's COCO / VOC thresholds (run_sample_coco.py: cam_eval_thres 0.15
# vs 0.21, sem_seg_bg_thres 0.25 vs 0.28). Epochs: ReCAM trains its CAM and affinity networks for the same epochs
# on both datasets, so they stay; the segmentation network: ToCo's 4x the VOC iterations (80k vs 20k), here
# SEAM's 20k x batch 10 -> 80k = 9.7 epochs of the 82,081 train images.
SCRIPT_DEFAULTS: dict[str, dict[str, Any]] = {
    "train_cls_ser": {"train_list": TRAIN_LIST, "val_list": VAL_PART_LIST, "cls_labels": LABELS},
    "infer_cls_ser": {"infer_list": TRAIN_LIST, "cls_labels": LABELS, "bg_score": 0.14},
    "train_aff": {"train_list": TRAIN_LIST},
    "infer_aff": {"infer_list": TRAIN_LIST, "bg_score": 0.18},
    "train_seg": {"train_list": TRAIN_LIST, "max_epoches": 10},
    "infer_seg": {"infer_list": VAL_LIST},
    "evaluation": {"list": TRAIN_LIST},
    "run_pipeline": {"train_list": TRAIN_LIST, "val_list": VAL_LIST, "eval_list": TRAIN_LIST},
}


def split_of(image_id: str) -> str:
    """``train2014`` of ``COCO_train2014_000000000009``: the folder of the image and of its mask."""
    match = _ID.fullmatch(image_id)
    if match is None:
        raise InputError(f"{image_id!r} is not a COCO-2014 id (a file stem like COCO_train2014_000000000009)")
    return match.group("split")


class COCO14(DatasetInfo):
    name = "coco14"
    class_names = CLASS_NAMES
    default_root = "COCO2014"

    def image_path(self, image_id: str) -> Path:
        return self.root / split_of(image_id) / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / split_of(image_id) / f"{image_id}.png"

    def check_root(self) -> None:
        super().check_root()
        if not any((self.root / split).is_dir() for split in SPLITS):
            voc = " (it looks like a VOC devkit: --dataset voc12)" if (self.root / "JPEGImages").is_dir() else ""
            raise MissingFileError(f"--dataset_root {self.root}: no train2014/ or val2014/ folder, not COCO-2014{voc}")

    def load_labels(self, ids: Iterable[str], cls_labels: str | os.PathLike | None) -> dict[str, np.ndarray]:
        path = Path(cls_labels or LABELS)
        if not path.is_file():
            raise MissingFileError(
                f"--cls_labels {path}: not found; python -m coco14.prepare --coco_root {self.root} writes it"
            )
        return pick_labels(load_cls_labels(path, self.num_fg_classes), ids, f"--cls_labels {path}")

    @classmethod
    def flag_defaults(cls, script: str, root: Path | None) -> dict[str, Any]:
        return {**super().flag_defaults(script, root), **SCRIPT_DEFAULTS.get(script, {})}
