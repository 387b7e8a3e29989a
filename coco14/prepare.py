"""COCO-2014 instance annotations -> semantic masks, image lists and image-level labels (docs/datasets.md#coco-2014).

    python -m coco14.prepare --coco_root COCO2014 [--recipe recam|coco2voc] [--void_border N]

Reads ``<coco_root>/annotations/instances_{train,val}2014.json`` (the JPEGs are not opened) and writes, for both
splits:

- ``<coco_root>/SegmentationClass/{train2014,val2014}/<id>.png``: one 8-bit palette PNG (VOC colours) per image of
  the split, images without annotations included, holding contiguous class indices 0..80
  (:data:`coco14.dataset.CATEGORY_TO_INDEX`); ``<id>`` is the file stem of the image's ``file_name``;
- ``<list_dir>/train.txt`` and ``val.txt``: the images with at least one annotation (crowd ones count), in image-id
  order; a different existing list is kept unless ``--overwrite``. Each is compared with the list shipped in
  ``coco14/`` and a difference is logged as a warning;
- ``<list_dir>/cls_labels.npz``: the 80-d multi-hot label of every listed image, from all its annotations' categories.

Instances overlap in COCO, so a semantic mask depends on how they are composed. Two published recipes:

- ``recam`` (default), the recipe of ReCAM's and CLIMS' ``mscoco/annToMask.py``: non-crowd annotations only, in
  annotation order, each one overwriting the pixels of the earlier ones; crowd regions stay background and 255 is
  never written;
- ``coco2voc``, alicranck/coco2voc (the recipe ToCo points to): crowd annotations included, instances sorted by
  ``area`` (smallest first, stable), and a pixel keeps the first class written to it, so small objects are not
  covered by large ones. ``--void_border N`` then marks, after each instance, the N-pixel ring around it (its
  dilation by a (2N+1)x(2N+1) square minus the instance) as 255, also where an earlier instance was; later
  instances do not write over those pixels.

Polygons and RLE (compressed, and the uncompressed RLE of crowd annotations) are decoded by pycocotools. Both JSON
files are validated before anything is written, the masks are computed in ``--num_workers`` forked processes that
share the loaded index, every file is written atomically and existing PNGs are skipped, so a killed run resumes
(``--overwrite`` rewrites them).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from pycocotools.coco import COCO
from scipy import ndimage
from tqdm import tqdm

from coco14.dataset import CATEGORY_TO_INDEX, COCO14_DIR, LABELS, SPLITS, TRAIN_LIST, VAL_LIST, split_of
from tool import cli
from tool.cli import InputError, MissingFileError
from tool.dataset import color_map, load_img_id_list, write_lists
from tool.fileio import remove_stale_temps, save_cls_labels, save_png
from tool.metrics import IGNORE_INDEX

logger = logging.getLogger(__name__)

RECIPES = ("recam", "coco2voc")
LIST_NAMES = {"train2014": "train", "val2014": "val"}  # <list_dir>/<name>.txt of each split
NUM_FG_CLASSES = len(CATEGORY_TO_INDEX)
CHUNK_SIZE = 64  # images per task handed to a worker (a fraction of a second of work)
IMAGE_KEYS = ("id", "file_name", "height", "width")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "iscrowd")


def instances_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


# --------------------------------------------------------------------------- reading and validating the JSON


def check_root(root: Path) -> None:
    """Refuse a missing folder, and a VOC devkit given by mistake, before reading anything."""
    if not root.is_dir():
        raise MissingFileError(f"--coco_root {root}: not a folder (expected train2014/, val2014/ and annotations/)")
    if (root / "JPEGImages").is_dir() and not (root / "train2014").is_dir():
        raise InputError(
            f"--coco_root {root}: it looks like a VOC devkit (JPEGImages/, no train2014/), not COCO-2014; "
            "VOC masks come from python -m voc12.make_sbd_aug"
        )


def require_file(path: Path) -> None:
    if not path.is_file():
        raise MissingFileError(f"{path}: not found (the COCO-2014 instances file of annotations_trainval2014.zip)")


def load_instances(path: Path) -> dict:
    """The parsed instances JSON; a missing, truncated or foreign file raises an error naming it."""
    require_file(path)
    try:
        with open(path, "rb") as f:
            dataset = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON (truncated or corrupt?): {e.msg}: line {e.lineno} column {e.colno} (char {e.pos})"
        ) from None
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(f"{path}: cannot be read as JSON text: {e}") from None
    if not isinstance(dataset, dict):
        raise InputError(f"{path}: expected a JSON object (COCO instances file), got a {type(dataset).__name__}")
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(dataset.get(key), list)]
    if missing:
        raise InputError(f"{path}: no {' / '.join(repr(k) for k in missing)} list: not a COCO instances file")
    return dataset


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def image_stem(image: dict, split: str, where: str) -> str:
    """The id string of an image: the stem of its ``file_name``, which must name an image of ``split``."""
    stem = PurePosixPath(str(image["file_name"])).stem
    try:
        stem_split = split_of(stem)
    except InputError as e:
        raise InputError(f"{where}: file_name {image['file_name']!r}: {e}") from None
    if stem_split != split:
        raise InputError(f"{where}: file_name {image['file_name']!r} is a {stem_split} image, not {split}")
    return stem


def check_images(images: list, path: Path, split: str) -> dict[int, str]:
    """``{image id: id string}`` in image-id order, for the images of ``split``."""
    names: dict[int, str] = {}
    owners: dict[str, int] = {}  # id string -> image id
    for n, image in enumerate(images):
        if not isinstance(image, dict) or any(key not in image for key in IMAGE_KEYS):
            raise InputError(f"{path}: images[{n}] is not an object with the keys {', '.join(IMAGE_KEYS)}")
        image_id, height, width = image["id"], image["height"], image["width"]
        where = f"{path}: image {image_id!r}"
        if not _is_int(image_id) or image_id in names:
            raise InputError(f"{where}: image ids must be unique integers")
        if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
            raise InputError(f"{where}: height and width must be positive integers, got {height!r} x {width!r}")
        stem = image_stem(image, split, where)
        if stem in owners:
            raise InputError(f"{where}: file_name {image['file_name']!r} is also that of image {owners[stem]}")
        names[image_id], owners[stem] = stem, image_id
    return dict(sorted(names.items()))


def check_segmentation(segmentation, size: tuple[int, int], where: str) -> None:
    """Polygons (a non-empty list of coordinate lists) or an RLE object of the image's size."""
    if isinstance(segmentation, list):
        if segmentation and all(isinstance(polygon, list) and polygon for polygon in segmentation):
            return
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if not isinstance(segmentation["counts"], (str, list)):
            raise InputError(f"{where}: RLE 'counts' must be a string or a list of ints")
        if not isinstance(segmentation["size"], list) or segmentation["size"] != list(size):
            raise InputError(f"{where}: RLE size {segmentation['size']!r} is not [height, width] = {list(size)}")
        return
    raise InputError(f"{where}: 'segmentation' is neither polygons ([[x1, y1, x2, y2, ...], ...]) nor an RLE object")


def check_annotations(annotations: list, path: Path, sizes: dict[int, tuple[int, int]], recipe: str) -> None:
    """Every annotation refers to a listed image and a COCO-2014 category and has a decodable-looking mask."""
    keys = ANNOTATION_KEYS + (("area",) if recipe == "coco2voc" else ())
    seen: set[int] = set()
    for n, ann in enumerate(annotations):
        if not isinstance(ann, dict) or any(key not in ann for key in keys):
            raise InputError(f"{path}: annotations[{n}] is not an object with the keys {', '.join(keys)}")
        ann_id, category_id, image_id = ann["id"], ann["category_id"], ann["image_id"]
        where = f"{path}: annotation {ann_id!r}"
        if not _is_int(ann_id) or ann_id in seen:
            raise InputError(f"{where}: annotation ids must be unique integers")
        seen.add(ann_id)
        if not _is_int(category_id) or category_id not in CATEGORY_TO_INDEX:
            raise InputError(f"{where}: category id {category_id!r} is not one of the 80 COCO-2014 categories")
        if not _is_int(image_id) or image_id not in sizes:
            raise InputError(f"{where}: image id {image_id!r} is not in 'images'")
        if ann["iscrowd"] not in (0, 1):
            raise InputError(f"{where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        if recipe == "coco2voc" and not (isinstance(ann["area"], (int, float)) and math.isfinite(ann["area"])):
            raise InputError(
                f"{where}: area must be a finite number (--recipe coco2voc sorts by it), not {ann['area']!r}"
            )
        check_segmentation(ann["segmentation"], sizes[image_id], where)


@dataclass
class Split:
    """One split's validated annotations: the pycocotools index and what the lists and labels need."""

    name: str
    source: Path  # the instances JSON, named in errors
    coco: COCO
    names: dict[int, str]  # image id -> id string (file stem), in image-id order
    labels: dict[str, np.ndarray]  # id string -> (80,) float32 multi-hot, images with annotations only

    @property
    def listed(self) -> list[str]:
        """The images with at least one annotation, in image-id order."""
        return [stem for stem in self.names.values() if stem in self.labels]


def image_labels(annotations: list, names: dict[int, str]) -> dict[str, np.ndarray]:
    """The multi-hot label of every annotated image, from all its annotations (crowd ones included)."""
    labels: dict[str, np.ndarray] = {}
    for ann in annotations:
        stem = names[ann["image_id"]]
        if stem not in labels:
            labels[stem] = np.zeros(NUM_FG_CLASSES, np.float32)
        labels[stem][CATEGORY_TO_INDEX[ann["category_id"]] - 1] = 1
    return labels


def load_split(root: Path, split: str, recipe: str) -> Split:
    path = instances_path(root, split)
    logger.info("reading %s", path)
    dataset = load_instances(path)
    names = check_images(dataset["images"], path, split)
    sizes = {image["id"]: (image["height"], image["width"]) for image in dataset["images"]}
    check_annotations(dataset["annotations"], path, sizes, recipe)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
        coco.createIndex()
    return Split(split, path, coco, names, image_labels(dataset["annotations"], names))


# --------------------------------------------------------------------------- the two recipes

Decode = Callable[[dict], np.ndarray]  # annotation -> (H, W) uint8 0/1 mask


def recam_label(anns: list[dict], decode: Decode, shape: tuple[int, int]) -> np.ndarray:
    """ReCAM's annToMask.py: the non-crowd instances in annotation order, a later one overwriting earlier ones."""
    label = np.zeros(shape, np.uint8, order="F")  # column-major like pycocotools' masks: the copies stay contiguous
    for ann in anns:
        if ann["iscrowd"] == 0:
            np.copyto(label, CATEGORY_TO_INDEX[ann["category_id"]], where=decode(ann).view(bool))
    return label


def coco2voc_label(anns: list[dict], decode: Decode, shape: tuple[int, int], void_border: int) -> np.ndarray:
    """coco2voc: every instance, smallest area first, the first class written to a pixel kept; optional void rings."""
    label = np.zeros(shape, np.uint8, order="F")
    for ann in sorted(anns, key=lambda a: a["area"]):  # a stable sort: equal areas keep annotation order
        mask = decode(ann).view(bool)
        np.copyto(label, CATEGORY_TO_INDEX[ann["category_id"]], where=mask & (label == 0))
        if void_border:
            label[void_ring(mask, void_border)] = IGNORE_INDEX
    return label


def void_ring(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of the dilation of ``mask`` by a (2 width + 1)^2 square that are not in ``mask``.

    Computed in the mask's bounding box grown by ``width``: no pixel outside it is within reach."""
    ring = np.zeros(mask.shape, bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return ring
    box = (
        slice(max(rows[0] - width, 0), rows[-1] + width + 1),
        slice(max(cols[0] - width, 0), cols[-1] + width + 1),
    )
    window = mask[box]
    grown = ndimage.maximum_filter(window.view(np.uint8), size=2 * width + 1, mode="constant", cval=0)
    ring[box] = grown.view(bool) & ~window
    return ring


# --------------------------------------------------------------------------- writing the masks in parallel


@dataclass(frozen=True)
class MaskJob:
    """What a worker needs; forked workers inherit it (and the loaded index) instead of unpickling it."""

    coco: COCO
    source: Path
    out_dir: Path
    names: dict[int, str]
    recipe: str
    void_border: int
    palette: np.ndarray


_JOB: MaskJob | None = None  # set by write_chunks for the duration of one split


def instance_mask(coco: COCO, ann: dict, source: Path) -> np.ndarray:
    try:
        return coco.annToMask(ann)
    except Exception as e:  # pycocotools raises several types for a malformed polygon or RLE
        raise InputError(f"{source}: annotation {ann['id']}: cannot decode its segmentation: {e!r}") from None


def label_map(job: MaskJob, image_id: int) -> np.ndarray:
    """The (H, W) uint8 class-index mask of one image under ``job.recipe``."""
    image = job.coco.imgs[image_id]
    anns = job.coco.loadAnns(job.coco.getAnnIds(imgIds=[image_id]))  # annotation (JSON) order

    def decode(ann: dict) -> np.ndarray:
        return instance_mask(job.coco, ann, job.source)

    shape = (image["height"], image["width"])
    if job.recipe == "recam":
        return recam_label(anns, decode, shape)
    return coco2voc_label(anns, decode, shape, job.void_border)


def write_chunk(image_ids: list[int]) -> int:
    """Compute and write the PNGs of ``image_ids`` (in a worker or in the main process); returns their count."""
    job = _JOB
    for image_id in image_ids:
        save_png(job.out_dir / f"{job.names[image_id]}.png", label_map(job, image_id), job.palette)
    return len(image_ids)


def write_chunks(job: MaskJob, image_ids: list[int], num_workers: int, desc: str) -> None:
    """Run :func:`write_chunk` over ``image_ids`` in chunks: in ``num_workers`` forked processes, or here for 0."""
    global _JOB
    chunks = [image_ids[i : i + CHUNK_SIZE] for i in range(0, len(image_ids), CHUNK_SIZE)]
    fork = "fork" in multiprocessing.get_all_start_methods()
    if num_workers and not fork:
        logger.warning("no fork start method on this platform: writing the masks in this process")
    _JOB = job
    try:
        with tqdm(total=len(image_ids), desc=desc, unit="img") as bar:
            if not (num_workers and fork and len(chunks) > 1):
                for chunk in chunks:
                    bar.update(write_chunk(chunk))
                return
            gc.freeze()  # the collector in the workers then leaves the inherited objects' pages shared
            try:
                context = multiprocessing.get_context("fork")
                initargs = (os.getpid(),)
                with context.Pool(num_workers, initializer=cli.die_with_parent, initargs=initargs) as pool:
                    for done in pool.imap_unordered(write_chunk, chunks):
                        bar.update(done)
            finally:
                gc.unfreeze()
    finally:
        _JOB = None


def write_masks(split: Split, root: Path, args: argparse.Namespace) -> dict:
    """Write the split's missing PNGs (all of them with ``--overwrite``); returns the counts of the summary."""
    out_dir = cli.check_output_dir(root / "SegmentationClass" / split.name, "--coco_root")
    existing = set() if args.overwrite else {entry.name for entry in os.scandir(out_dir)}
    todo = [image_id for image_id, stem in split.names.items() if f"{stem}.png" not in existing]
    remove_stale_temps({out_dir}, {split.names[image_id] for image_id in todo})  # hidden temp files of a killed run
    void_border = args.void_border or 0
    job = MaskJob(split.coco, split.source, out_dir, split.names, args.recipe, void_border, color_map())
    write_chunks(job, todo, args.num_workers, f"SegmentationClass/{split.name}")
    return {
        "images": len(split.names),
        "listed": len(split.listed),
        "written": len(todo),
        "skipped": len(split.names) - len(todo),
    }


# --------------------------------------------------------------------------- lists, labels and the command


def compare_with_shipped(lists: dict[str, list[str]]) -> None:
    """Log a warning for each list that differs from the one shipped in coco14/ (equal on the real COCO files)."""
    for name, shipped_path in (("train", TRAIN_LIST), ("val", VAL_LIST)):
        if not Path(shipped_path).is_file():
            logger.warning("%s: the shipped list is missing, nothing to compare %s.txt with", shipped_path, name)
            continue
        ours, shipped = lists[name], load_img_id_list(shipped_path)
        if ours == shipped:
            continue
        only_ours, only_shipped = len(set(ours) - set(shipped)), len(set(shipped) - set(ours))
        logger.warning(
            "%s.txt differs from the shipped %s: %d ids only in ours, %d only in the shipped list%s",
            name,
            shipped_path,
            only_ours,
            only_shipped,
            "" if only_ours or only_shipped else " (same ids, another order)",
        )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco_root", required=True, help="COCO-2014 folder with annotations/ (masks go here)")
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        default="recam",
        help="how overlapping instances are composed: recam (ReCAM / CLIMS annToMask.py, default) or coco2voc "
        "(alicranck/coco2voc, as ToCo); see the module docstring",
    )
    parser.add_argument(
        "--void_border",
        type=cli.nonneg_int,
        default=None,
        help="--recipe coco2voc only: mark an N-pixel ring around each instance as 255 (default 0, off)",
    )
    parser.add_argument(
        "--list_dir", type=Path, default=COCO14_DIR, help="where train.txt, val.txt and cls_labels.npz are written"
    )
    parser.add_argument(
        "--num_workers",
        type=cli.worker_count,
        default=cli.default_workers(8),
        help="processes writing the masks (0: this process); default 8, at most the usable CPUs",
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs and differing lists")
    return parser


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.void_border is not None and args.recipe != "coco2voc":
        raise InputError(f"--void_border applies to --recipe coco2voc only (got --recipe {args.recipe})")
    root = Path(args.coco_root)
    check_root(root)
    for split in SPLITS:  # both files are there before the first, slow, one is read
        require_file(instances_path(root, split))
    splits = [load_split(root, split, args.recipe) for split in SPLITS]
    lists = {LIST_NAMES[split.name]: split.listed for split in splits}
    compare_with_shipped(lists)
    list_dir = cli.check_output_dir(args.list_dir, "--list_dir")
    written = write_lists(list_dir, lists, args.overwrite)
    labels = {stem: label for split in splits for stem, label in split.labels.items()}
    save_cls_labels(list_dir / LABELS.name, labels, num_classes=NUM_FG_CLASSES)
    logger.info(
        "lists: %s; labels of %d images -> %s",
        ", ".join(f"{name}.txt {len(ids)} ids" for name, ids in lists.items()) + ("" if written else " (unchanged)"),
        len(labels),
        list_dir / LABELS.name,
    )
    summary = {}
    for split in splits:
        summary[split.name] = counts = write_masks(split, root, args)
        logger.info(
            "%s: %d images (%d with annotations); masks (--recipe %s): %d written, %d already there -> %s",
            split.name,
            counts["images"],
            counts["listed"],
            args.recipe,
            counts["written"],
            counts["skipped"],
            root / "SegmentationClass" / split.name,
        )
    return summary


if __name__ == "__main__":
    cli.run(main, get_args_parser())
