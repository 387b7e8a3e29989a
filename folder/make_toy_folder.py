"""A small synthetic dataset in the user-folder layout, for the ``--dataset folder`` demo.

The images are those of ``voc12.make_toy_voc`` (same renderer), restricted to five of its six shape classes
(tvmonitor is left out), so that the folder's class count differs from every built-in dataset's:

    <out>/images/<id>.jpg|.jpeg|.png    mostly RGB JPEG; by position, 3 in 10 are PNG: greyscale ("L"),
                                        palette ("P") or RGBA (opaque), so readers must convert to RGB
    <out>/classes.txt                   the 5 class names, one a line (mask index k is line k)
    <out>/labels.txt                    "<id> <class> <class> ..." one line per image: class names, or on every
                                        7th line (from the 4th) 1-based class indices; an image without objects
                                        has only its id
    <out>/masks/<id>.png                palette PNG (VOC colour map): 0 background, 1..5 classes, 255 void band
    <out>/train.txt, <out>/val.txt      bare ids

Ids are file-name safe but not VOC-like, in four patterns (``img_0001``, ``photo-0002``, ``DSC00003``,
``scan_004-a``). A label line lists the classes that have a non-void pixel in the image's mask; every 12th
image (from the 7th) shows background only. Output is byte-identical for a given seed.

    python -m folder.make_toy_folder --out toy_folder --num_train 100 --num_val 30 --size 128 --seed 0
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tool import cli
from tool.dataset import color_map, list_file
from tool.fileio import atomic_path, atomic_write_text, save_png
from tool.metrics import IGNORE_INDEX
from voc12.make_toy_voc import (
    JPEG_QUALITY,
    TOY_CLASSES,
    add_toy_args,
    check_toy_params,
    prepare_toy_output,
    render_toy_scene,
    stratified_primaries,
    toy_label,
)

MARKER_FILE = "toy_folder.json"
MANAGED_DIRS = ("images", "masks")
DROPPED_CLASS = "tvmonitor"
CLASS_POOL = tuple(k for k, toy in enumerate(TOY_CLASSES) if toy.name != DROPPED_CLASS)  # TOY_CLASSES indices
CLASS_NAMES = tuple(TOY_CLASSES[k].name for k in CLASS_POOL)  # classes.txt order: mask index k + 1
ID_PATTERNS = ("img_{:04d}", "photo-{:04d}", "DSC{:05d}", "scan_{:03d}-a")
# (extension, image mode) by image position; 7 in 10 are RGB JPEG so the demo still learns from colour.
FILE_CYCLE = (
    ("jpg", "RGB"),
    ("jpg", "RGB"),
    ("jpeg", "RGB"),
    ("png", "L"),
    ("jpg", "RGB"),
    ("png", "P"),
    ("jpg", "RGB"),
    ("jpeg", "RGB"),
    ("png", "RGBA"),
    ("jpg", "RGB"),
)
EMPTY_EVERY, EMPTY_FIRST = 12, 6  # images 6, 18, 30, ... have no object
INDEX_LINES_EVERY, INDEX_LINES_FIRST = 7, 3  # label lines 3, 10, 17, ... give 1-based indices, not names


@dataclass(frozen=True)
class ToyFolderImage:
    """What one toy image is drawn from: ``index`` seeds the renderer; no ``primary_class`` means no object."""

    index: int
    image_id: str
    split: str
    extension: str
    mode: str
    primary_class: int | None
    primary_extent: float


def plan_images(num_train: int, num_val: int, seed: int, min_extent: float, max_extent: float) -> list[ToyFolderImage]:
    """Every image of the set in order: its id, split, file format and first object (stratified over the images
    with objects, like ``make_toy_voc``)."""
    num_images = num_train + num_val
    rng = np.random.default_rng(seed)
    is_val = np.zeros(num_images, dtype=bool)
    is_val[rng.choice(num_images, size=num_val, replace=False)] = True
    empty = np.arange(num_images) % EMPTY_EVERY == EMPTY_FIRST
    classes, extents = stratified_primaries(rng, int((~empty).sum()), CLASS_POOL, min_extent, max_extent)
    plan, drawn = [], 0
    for index in range(num_images):
        primary_class, primary_extent = None, 0.0
        if not empty[index]:
            primary_class, primary_extent = int(classes[drawn]), float(extents[drawn])
            drawn += 1
        image_id = ID_PATTERNS[index % len(ID_PATTERNS)].format(index + 1)
        extension, mode = FILE_CYCLE[index % len(FILE_CYCLE)]
        split = "val" if is_val[index] else "train"
        plan.append(ToyFolderImage(index, image_id, split, extension, mode, primary_class, primary_extent))
    return plan


def _write_image(path: Path, rgb: np.ndarray, mode: str) -> None:
    """Save ``rgb`` in ``mode``: RGB as JPEG, the others as PNG (palette by median-cut quantisation)."""
    if mode == "RGB":
        image = Image.fromarray(rgb)
    elif mode == "L":
        image = Image.fromarray(rgb).convert("L")
    elif mode == "P":
        image = Image.fromarray(rgb).quantize(colors=256)
    else:
        image = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), mode="RGBA")
    with atomic_path(path) as tmp:
        if path.suffix in (".jpg", ".jpeg"):
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        else:
            image.save(tmp, format="PNG")


def label_line(image_id: str, mask_indices: list[int], as_indices: bool) -> str:
    """One labels.txt line: the id, then each class as its name or (``as_indices``) its 1-based index."""
    tokens = [str(k) if as_indices else CLASS_NAMES[k - 1] for k in mask_indices]
    return " ".join([image_id, *tokens])


def make_toy_folder(
    out: str | Path,
    num_train: int,
    num_val: int,
    size: int = 128,
    seed: int = 0,
    void_width: int = 3,
    min_extent: float = 0.10,
    max_extent: float = 0.50,
    max_objects: int = 3,
) -> dict[str, Any]:
    """Write a toy user-folder dataset under ``out``; returns a summary (also saved as ``<out>/toy_folder.json``).

    Summary keys: ``train``, ``val`` (id lists as in train.txt / val.txt), ``classes`` (classes.txt),
    ``empty`` (ids without a class), ``class_counts`` (images labelled with each class), ``extensions`` and
    ``modes`` (images per file extension and per image mode), and the generation parameters under ``params``.
    """
    params = {"void_width": void_width, "min_extent": min_extent, "max_extent": max_extent, "max_objects": max_objects}
    check_toy_params(num_train, num_val, size, seed, params)
    out = Path(out)
    prepare_toy_output(out, MARKER_FILE, MANAGED_DIRS, "make_toy_folder")

    plan = plan_images(num_train, num_val, seed, min_extent, max_extent)
    palette = color_map()
    lines, present = [], {}
    for entry in plan:
        rgb, owner, classes = render_toy_scene(
            entry.index,
            seed,
            size,
            entry.primary_class,
            entry.primary_extent,
            min_extent,
            max_extent,
            max_objects,
            CLASS_POOL,
        )
        label, _ = toy_label(owner, [CLASS_POOL.index(c) + 1 for c in classes], void_width)
        _write_image(out / "images" / f"{entry.image_id}.{entry.extension}", rgb, entry.mode)
        save_png(out / "masks" / f"{entry.image_id}.png", label, palette)
        present[entry.image_id] = [int(k) for k in np.unique(label) if k not in (0, IGNORE_INDEX)]
        as_indices = entry.index % INDEX_LINES_EVERY == INDEX_LINES_FIRST
        lines.append(label_line(entry.image_id, present[entry.image_id], as_indices))

    train, val = ([entry.image_id for entry in plan if entry.split == split] for split in ("train", "val"))
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in CLASS_NAMES))
    atomic_write_text(out / "labels.txt", "".join(f"{line}\n" for line in lines))
    for name, list_ids in (("train", train), ("val", val)):
        atomic_write_text(list_file(out, name), "".join(f"{i}\n" for i in list_ids))

    summary = {"train": train, "val": val, **_counts(plan, present)}
    summary["params"] = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed, **params}
    atomic_write_text(out / MARKER_FILE, json.dumps(summary, indent=1) + "\n")
    return summary


def _counts(plan: list[ToyFolderImage], present: dict[str, list[int]]) -> dict[str, Any]:
    class_counts = {name: sum(k + 1 in found for found in present.values()) for k, name in enumerate(CLASS_NAMES)}
    extensions = {ext: sum(entry.extension == ext for entry in plan) for ext in ("jpg", "jpeg", "png")}
    modes = {mode: sum(entry.mode == mode for entry in plan) for mode in ("RGB", "L", "P", "RGBA")}
    return {
        "classes": list(CLASS_NAMES),
        "empty": [image_id for image_id, found in present.items() if not found],
        "class_counts": class_counts,
        "extensions": extensions,
        "modes": modes,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a synthetic dataset in the user-folder layout.")
    parser.add_argument("--out", required=True, help="output folder (the --dataset_root of --dataset folder)")
    add_toy_args(parser, 128, "train.txt", "val.txt")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    summary = make_toy_folder(
        args.out,
        args.num_train,
        args.num_val,
        args.size,
        args.seed,
        args.void_width,
        args.min_extent,
        args.max_extent,
        args.max_objects,
    )
    print(
        f"toy folder dataset in {args.out}: {len(summary['train'])} train + {len(summary['val'])} val images, "
        f"classes {summary['classes']}, images per class {summary['class_counts']}, "
        f"{len(summary['empty'])} without objects"
    )
    return summary


if __name__ == "__main__":
    cli.run(main, get_args_parser())
