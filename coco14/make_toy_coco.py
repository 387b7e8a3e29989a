"""A small synthetic dataset in the real COCO-2014 layout, for the ``--dataset coco14`` demo (docs/datasets.md).

The images are those of ``voc12.make_toy_voc`` (same renderer, same six shape classes); the annotations
follow the COCO instances schema, so ``python -m coco14.prepare --coco_root <out>`` builds the masks, lists
and labels from them exactly as from the real files:

    <out>/train2014/COCO_train2014_<12-digit id>.jpg     RGB JPEG, long side ``size``
    <out>/val2014/COCO_val2014_<12-digit id>.jpg
    <out>/annotations/instances_{train,val}2014.json     "info", "licenses", "images", "annotations", "categories"

Image ids increase with gaps (like COCO's) and are unique over both splits; annotation ids too. The
"categories" are all 80 COCO categories with their real ids and supercategories; names are written with
spaces as in the released JSON ("traffic light"). The toy classes map to six of them (:data:`TOY_TO_COCO`).
Each visible instance (its pixels after occlusion; COCO has no void band) is one annotation. Most are
polygons, exact on the pixel grid: one per connected part, a hole joined to its part's outline by a
zero-width cut. By annotation id, 2 in 10 are compressed RLE and 1 in 10 is a crowd annotation (iscrowd 1,
uncompressed RLE), so readers meet every encoding. ``area`` is the pixel count, ``bbox`` ``[x, y, w, h]`` the
mask's box. The first image of each split, and every 25th after it, shows background only and has no
annotation (COCO has such images; the prepared lists leave them out). Output is byte-identical for a seed.

    python -m coco14.make_toy_coco --out toy_coco --num_train 100 --num_val 30 --size 128 --seed 0
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from coco14.dataset import CATEGORIES
from tool import cli
from tool.fileio import atomic_path, atomic_write_text
from voc12.make_toy_voc import (
    ALL_CLASSES,
    JPEG_QUALITY,
    TOY_CLASSES,
    add_toy_args,
    check_toy_params,
    prepare_toy_output,
    render_toy_scene,
    stratified_primaries,
)

MARKER_FILE = "toy_coco.json"
# Cleared when a toy set is rewritten; SegmentationClass/ is what coco14.prepare derived from the old one.
MANAGED_DIRS = ("train2014", "val2014", "annotations", "SegmentationClass")
TOY_TO_COCO = {"aeroplane": 5, "bird": 16, "car": 3, "cat": 17, "person": 1, "tvmonitor": 72}
# COCO's supercategories, each the first category id it covers (ids run in supercategory order).
SUPERCATEGORIES = (
    (1, "person"),
    (2, "vehicle"),
    (10, "outdoor"),
    (16, "animal"),
    (27, "accessory"),
    (34, "sports"),
    (44, "kitchen"),
    (52, "food"),
    (62, "furniture"),
    (72, "electronic"),
    (78, "appliance"),
    (84, "indoor"),
)
EMPTY_EVERY = 25  # images 0, 25, 50, ... of each split have no object
ENCODING_CYCLE = ("polygon", "polygon", "rle", "polygon", "polygon", "crowd", "polygon", "rle", "polygon", "polygon")
FIRST_IMAGE_ID = 9  # COCO train2014's first id; the gaps after it are 2..MAX_ID_GAP
MAX_ID_GAP = 40
SPLITS = ("train2014", "val2014")


@dataclass(frozen=True)
class ToyCocoImage:
    """What one toy image is drawn from: ``index`` seeds the renderer; no ``primary_class`` means no object."""

    index: int
    image_id: int
    split: str
    primary_class: int | None
    primary_extent: float

    @property
    def file_name(self) -> str:
        return f"COCO_{self.split}_{self.image_id:012d}.jpg"


def coco_categories() -> list[dict[str, Any]]:
    """The "categories" of the COCO-2014 instances files: all 80, real ids, names with spaces."""
    categories = []
    for cat_id, name in CATEGORIES:
        supercategory = [sup for first, sup in SUPERCATEGORIES if first <= cat_id][-1]
        categories.append({"supercategory": supercategory, "id": cat_id, "name": name.replace("_", " ")})
    return categories


def plan_images(num_train: int, num_val: int, seed: int, min_extent: float, max_extent: float) -> list[ToyCocoImage]:
    """Every image of the set in id order: its id, split and first object (stratified over the images with
    objects, like ``make_toy_voc``)."""
    num_images = num_train + num_val
    rng = np.random.default_rng(seed)
    image_ids = FIRST_IMAGE_ID + np.concatenate([[0], np.cumsum(rng.integers(2, MAX_ID_GAP + 1, num_images - 1))])
    is_val = np.zeros(num_images, dtype=bool)
    is_val[rng.choice(num_images, size=num_val, replace=False)] = True
    # Within each split, positions 0, EMPTY_EVERY, 2 * EMPTY_EVERY, ... are background only.
    position = np.where(is_val, np.cumsum(is_val) - 1, np.cumsum(~is_val) - 1)
    empty = position % EMPTY_EVERY == 0
    classes, extents = stratified_primaries(rng, int((~empty).sum()), ALL_CLASSES, min_extent, max_extent)
    plan, drawn = [], 0
    for index in range(num_images):
        primary_class, primary_extent = None, 0.0
        if not empty[index]:
            primary_class, primary_extent = int(classes[drawn]), float(extents[drawn])
            drawn += 1
        split = SPLITS[int(is_val[index])]
        plan.append(ToyCocoImage(index, int(image_ids[index]), split, primary_class, primary_extent))
    return plan


def _join_hole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One closed (N, 2) path around ``outline`` that detours around ``hole`` through a zero-width cut between
    their nearest vertices; polygon filling (even-odd, as pycocotools does) then leaves the hole out."""
    distances = ((outline[:, None, :] - hole[None, :, :]) ** 2).sum(axis=-1)
    i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
    return np.concatenate([outline[: i + 1], hole[j:], hole[: j + 1], outline[i:]])


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ``[x1, y1, x2, y2, ...]`` of a binary (H, W) mask, one per connected part.

    The outlines are traced on the mask upsampled 2x, so each vertex lies a quarter pixel inside the
    boundary of its pixel: rasterised with COCO's convention (pixel (x, y) spans [x, x + 1]) the polygons give
    back the mask's pixels, where contours through pixel centres would lose half of every boundary pixel.
    """
    upsampled = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(upsampled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for k, contour in enumerate(contours):
        _, _, child, parent = hierarchy[0][k]
        if parent >= 0:  # a hole: part of its outline's path
            continue
        path = contour.reshape(-1, 2)
        while child >= 0:
            path = _join_hole(path, contours[child].reshape(-1, 2))
            child = hierarchy[0][child][0]
        if len(path) >= 3:
            polygons.append(((path + 0.5) / 2).reshape(-1).tolist())
    return polygons


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a binary (H, W) mask: run lengths in column-major order, starting with a
    (possibly empty) run of zeros."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": list(mask.shape)}


def instance_annotation(mask: np.ndarray, encoding: str, ann_id: int, image_id: int, category_id: int) -> dict:
    """One COCO annotation of a visible instance; ``encoding`` is ``polygon``, ``rle`` or ``crowd``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if encoding == "polygon":
        segmentation = mask_polygons(mask)
    elif encoding == "rle":
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = uncompressed_rle(mask)
    return {
        "segmentation": segmentation,
        "area": int(mask_utils.area(rle)),
        "iscrowd": int(encoding == "crowd"),
        "image_id": image_id,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "category_id": category_id,
        "id": ann_id,
    }


def image_annotations(owner: np.ndarray, classes: list[int], image_id: int, first_ann_id: int) -> list[dict]:
    """The annotations of one image's visible instances (``owner`` k + 1 is shape k), ids from ``first_ann_id``."""
    annotations = []
    for k, cls in enumerate(classes):
        mask = owner == k + 1
        if not mask.any():  # fully occluded
            continue
        ann_id = first_ann_id + len(annotations)
        encoding = ENCODING_CYCLE[ann_id % len(ENCODING_CYCLE)]
        category_id = TOY_TO_COCO[TOY_CLASSES[cls].name]
        annotations.append(instance_annotation(mask, encoding, ann_id, image_id, category_id))
    return annotations


def _instances_file(split: str, images: list[dict], annotations: list[dict]) -> dict[str, Any]:
    return {
        "info": {
            "description": f"Synthetic toy COCO 2014 {split} (coco14.make_toy_coco)",
            "url": "",
            "version": "1.0",
            "year": 2014,
            "contributor": "coco14.make_toy_coco",
            "date_created": "",
        },
        "licenses": [{"url": "", "id": 1, "name": "Synthetic image, no restrictions"}],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=JPEG_QUALITY)


def make_toy_coco(
    out: str | Path,
    num_train: int,
    num_val: int,
    size: int = 128,
    seed: int = 0,
    min_extent: float = 0.10,
    max_extent: float = 0.50,
    max_objects: int = 3,
) -> dict[str, Any]:
    """Write a toy COCO-2014 tree under ``out``; returns a summary (also saved as ``<out>/toy_coco.json``).

    Summary keys: ``train``, ``val`` (image ids as the pipeline names them, the file stems, in id order),
    ``empty`` (those without annotation), ``num_annotations``, ``encodings`` (annotations per encoding:
    ``polygon``, ``rle``, ``crowd``), ``category_counts`` (annotations per COCO category name), and the
    generation parameters under ``params``.
    """
    params = {"min_extent": min_extent, "max_extent": max_extent, "max_objects": max_objects}
    check_toy_params(num_train, num_val, size, seed, params)
    out = Path(out)
    prepare_toy_output(out, MARKER_FILE, MANAGED_DIRS, "make_toy_coco")

    images: dict[str, list[dict]] = {split: [] for split in SPLITS}
    annotations: dict[str, list[dict]] = {split: [] for split in SPLITS}
    next_ann_id = 1
    for entry in plan_images(num_train, num_val, seed, min_extent, max_extent):
        rgb, owner, classes = render_toy_scene(
            entry.index, seed, size, entry.primary_class, entry.primary_extent, min_extent, max_extent, max_objects
        )
        _write_jpeg(out / entry.split / entry.file_name, rgb)
        height, width = owner.shape
        image = {"license": 1, "file_name": entry.file_name, "height": height, "width": width, "id": entry.image_id}
        images[entry.split].append(image)
        found = image_annotations(owner, classes, entry.image_id, next_ann_id)
        annotations[entry.split] += found
        next_ann_id += len(found)
    for split in SPLITS:
        text = json.dumps(_instances_file(split, images[split], annotations[split]), separators=(",", ":"))
        atomic_write_text(out / "annotations" / f"instances_{split}.json", text + "\n")

    summary = _summary(images, annotations)
    summary["params"] = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed, **params}
    atomic_write_text(out / MARKER_FILE, json.dumps(summary, indent=1) + "\n")
    return summary


def _summary(images: dict[str, list[dict]], annotations: dict[str, list[dict]]) -> dict[str, Any]:
    every = [ann for split in SPLITS for ann in annotations[split]]
    annotated = {ann["image_id"] for ann in every}
    names = {cat_id: name.replace("_", " ") for cat_id, name in CATEGORIES}
    category_counts = {names[cat_id]: 0 for cat_id in sorted(set(TOY_TO_COCO.values()))}
    encodings = {"polygon": 0, "rle": 0, "crowd": 0}
    for ann in every:
        category_counts[names[ann["category_id"]]] += 1
        kind = "crowd" if ann["iscrowd"] else "polygon" if isinstance(ann["segmentation"], list) else "rle"
        encodings[kind] += 1
    stem = {split: [Path(image["file_name"]).stem for image in images[split]] for split in SPLITS}
    empty = [Path(im["file_name"]).stem for split in SPLITS for im in images[split] if im["id"] not in annotated]
    return {
        "train": stem["train2014"],
        "val": stem["val2014"],
        "empty": empty,
        "num_annotations": len(every),
        "encodings": encodings,
        "category_counts": category_counts,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a synthetic dataset in the COCO-2014 layout.")
    parser.add_argument("--out", required=True, help="output folder (the --coco_root of coco14.prepare)")
    add_toy_args(parser, 128, "train2014/", "val2014/", void_band=False)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    summary = make_toy_coco(
        args.out, args.num_train, args.num_val, args.size, args.seed, args.min_extent, args.max_extent, args.max_objects
    )
    print(
        f"toy COCO in {args.out}: {len(summary['train'])} train + {len(summary['val'])} val images "
        f"({len(summary['empty'])} without objects), {summary['num_annotations']} annotations {summary['encodings']}"
    )
    return summary


if __name__ == "__main__":
    cli.run(main, get_args_parser())
