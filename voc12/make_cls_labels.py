"""Image-level class labels from the VOC XML annotations, and the image lists (docs/method.md#data).

The label of an image is a 20-d float32 multi-hot vector over CLASS_NAMES,
from the ``<name>`` of every ``<object>`` in ``Annotations/<id>.xml``. Only an
object's own ``<name>`` counts: person objects in VOC 2012 also carry
``<part><name>head</name>`` entries, which the reference skipped by silently
ignoring unknown names; here any other unknown name is an error naming the file.

The reference ships the labels as a pickled dict ``cls_labels.npy``; we store
them as ``.npz`` with ``ids`` (str, (N,)) and ``labels`` (float32, (N, 20)),
read with ``allow_pickle=False``. ``voc12/cls_labels.npz`` ships the published
labels of all 12,031 train_aug + val images without a dataset folder (valid for
any devkit); this module regenerates such labels from the XML, and the scripts
build a folder-bound cache on first use for ids no label file has.

The CLI also writes the lists the reference's defaults point to:
``<list_dir>/train.txt``, ``val.txt`` (from ``ImageSets/Segmentation``) and
``train_aug.txt`` (ids of ``SegmentationClassAug/*.png`` minus val), one bare
id per line, then labels for every id of every list:

    python -m voc12.make_cls_labels --voc12_root VOC2012 [--out voc12/cls_labels.npz] [--list_dir voc12]
    cd voc12; python make_cls_labels.py --voc12_root ../VOC2012    # the published README's way, same files

The defaults are this folder (``voc12/``), wherever the command runs from.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np

if not __package__:  # run as a file from inside voc12/ (the published README): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tool import cli  # noqa: E402
from tool.cli import InputError, MissingFileError  # noqa: E402
from tool.dataset import load_img_id_list, write_lists  # noqa: E402
from tool.fileio import label_file_root, load_cls_labels, save_cls_labels  # noqa: E402
from voc12.voc import CLASS_NAMES, NUM_FG_CLASSES, annotation_path

logger = logging.getLogger(__name__)

CLASS_INDEX = {name: index for index, name in enumerate(CLASS_NAMES)}
VOC12_DIR = Path(__file__).resolve().parent


def parse_annotation(xml_path: str | os.PathLike) -> list[str]:
    """Class names of the objects in one VOC annotation file, in file order (repeats kept)."""
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise MissingFileError(f"annotation not found: {xml_path} (every listed image needs Annotations/<id>.xml)")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise InputError(f"{xml_path}: malformed XML: {e}") from e
    if root.tag != "annotation":
        raise InputError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    names = []
    for number, obj in enumerate(root.findall("object"), start=1):
        name = obj.findtext("name")  # direct child only: <part><name> (head, hand, foot) is not a class
        if name is None or not name.strip():
            raise InputError(f"{xml_path}: <object> #{number} has no <name>")
        name = name.strip()
        if name not in CLASS_INDEX:
            raise InputError(f"{xml_path}: unknown class name {name!r} in <object> #{number}; expected one of VOC's 20")
        names.append(name)
    return names


def image_label(voc12_root: str | os.PathLike, image_id: str) -> np.ndarray:
    """(20,) float32 multi-hot vector of the classes present in ``image_id``."""
    label = np.zeros(NUM_FG_CLASSES, dtype=np.float32)
    for name in parse_annotation(annotation_path(voc12_root, image_id)):
        label[CLASS_INDEX[name]] = 1.0
    return label


def build_cls_labels(voc12_root: str | os.PathLike, ids: Iterable[str]) -> dict[str, np.ndarray]:
    """Labels of ``ids`` (duplicates collapsed) read from ``<voc12_root>/Annotations``."""
    return {image_id: image_label(voc12_root, image_id) for image_id in dict.fromkeys(ids)}


# How many cached labels of a folder-independent file are checked against the folder's own XML.
SPOT_CHECKS = 3


def load_or_build_cls_labels(
    voc12_root: str | os.PathLike, ids: Iterable[str], cache_path: str | os.PathLike
) -> dict[str, np.ndarray]:
    """Labels of ``ids`` (in order), from ``cache_path`` when it has them.

    A missing cache is built from the XML annotations; ids the cache lacks are read from XML and added, and the
    extended cache is written back atomically. Returns only the requested ids.

    Two kinds of cache (docs/formats.md#label-cache): one built here remembers its dataset folder and refuses
    any other; one without a folder (the shipped ``voc12/cls_labels.npz``, the published labels of every VOC 2012
    image) is valid for any devkit. Such a file is never rewritten: ids it lacks are read from XML for this run
    only, and, where the folder has annotations, the first few cached labels are checked against them, so
    another dataset that reuses VOC ids (the toy one does) is refused instead of silently mislabelled.
    """
    cache_path = Path(cache_path)
    ids = list(dict.fromkeys(ids))
    labels = load_cls_labels(cache_path, NUM_FG_CLASSES) if cache_path.exists() else {}
    root = str(Path(voc12_root).resolve())
    # Ids alone do not identify an image (the toy dataset reuses VOC-style ids), so a cache
    # built from another dataset folder must not be mixed with this one.
    cached_root = label_file_root(cache_path) if labels else None
    if cached_root is not None and cached_root != root:
        raise InputError(
            f"--cls_labels {cache_path} was built from {cached_root}, not from --voc12_root {root}; "
            "point --cls_labels elsewhere or delete the file"
        )
    portable = bool(labels) and cached_root is None
    if portable:
        _spot_check(cache_path, labels, ids, voc12_root)
    missing = [image_id for image_id in ids if image_id not in labels]
    if missing:
        logger.info("class labels: reading %d annotations from %s", len(missing), voc12_root)
        labels.update(build_cls_labels(voc12_root, missing))
        if not portable:
            save_cls_labels(cache_path, labels, voc12_root)
    return {image_id: labels[image_id] for image_id in ids}


def _spot_check(cache_path: Path, labels: dict[str, np.ndarray], ids: list[str], voc12_root) -> None:
    checked = [i for i in ids if i in labels and annotation_path(voc12_root, i).is_file()][:SPOT_CHECKS]
    for image_id in checked:
        from_xml = image_label(voc12_root, image_id)
        if not np.array_equal(from_xml, labels[image_id]):
            xml_path = annotation_path(voc12_root, image_id)
            raise InputError(
                f"--cls_labels {cache_path}: the label of {image_id} differs from {xml_path} "
                f"(classes {np.flatnonzero(labels[image_id]).tolist()} vs {np.flatnonzero(from_xml).tolist()}); "
                "these labels are not of this dataset: point --cls_labels elsewhere"
            )


def derive_lists(voc12_root: str | os.PathLike) -> tuple[dict[str, list[str]], str | None]:
    """The train / val / train_aug id lists of a VOC tree, and a note when train_aug cannot be derived.

    train_aug is the SegmentationClassAug ids minus val (sorted), else ``ImageSets/Segmentation/train_aug.txt``.
    """
    root = Path(voc12_root)
    image_sets = root / "ImageSets" / "Segmentation"
    lists = {name: load_img_id_list(image_sets / f"{name}.txt") for name in ("train", "val")}
    aug_dir = root / "SegmentationClassAug"
    if aug_dir.is_dir():
        val_ids = set(lists["val"])
        lists["train_aug"] = sorted({p.stem for p in aug_dir.glob("*.png")} - val_ids)
        if not lists["train_aug"]:
            raise InputError(f"{aug_dir} has no PNG outside the val list; cannot build train_aug")
        return lists, None
    if (image_sets / "train_aug.txt").is_file():
        lists["train_aug"] = load_img_id_list(image_sets / "train_aug.txt")
        return lists, None
    return lists, (
        f"no train_aug list: {aug_dir} and {image_sets / 'train_aug.txt'} are both missing "
        "(add the SBD-augmented SegmentationClassAug/ to build it)"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write VOC image lists and image-level class labels (.npz).")
    parser.add_argument("--voc12_root", required=True, help="VOC2012 devkit folder (JPEGImages, ...)")
    parser.add_argument(
        "--out",
        default=str(VOC12_DIR / "cls_labels.npz"),
        help="label file: .npz with 'ids' and 'labels' (N, 20) (default: voc12/cls_labels.npz of this repository)",
    )
    parser.add_argument(
        "--list_dir",
        default=str(VOC12_DIR),
        help="where train.txt, val.txt, train_aug.txt are written (default: voc12/ of this repository)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace list files that list different ids")
    return parser


def main(args: argparse.Namespace) -> dict[str, np.ndarray]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args.voc12_root).is_dir():
        raise MissingFileError(f"--voc12_root {args.voc12_root}: not a folder (expected the VOC2012 devkit folder)")
    lists, note = derive_lists(args.voc12_root)
    extra_ids: list[str] = []
    if note is not None:
        existing = Path(args.list_dir) / "train_aug.txt"
        if existing.is_file():
            # A train_aug.txt supplied by hand (e.g. the reference's) still gets labels.
            extra_ids = load_img_id_list(existing)
            note = f"{note}; keeping the existing {existing}"
        logger.warning(note)
    for path in write_lists(args.list_dir, lists, args.overwrite):
        logger.info("wrote %s", path)
    all_ids = sorted({image_id for ids in lists.values() for image_id in ids} | set(extra_ids))
    labels = build_cls_labels(args.voc12_root, all_ids)
    save_cls_labels(args.out, labels, args.voc12_root)
    counts = ", ".join(f"{name} {len(ids)}" for name, ids in lists.items())
    logger.info("wrote labels of %d images to %s (lists: %s)", len(labels), args.out, counts)
    return labels


if __name__ == "__main__":
    cli.run(main, get_args_parser())
