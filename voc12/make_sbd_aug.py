"""Build ``SegmentationClassAug/`` (the train_aug masks) from SBD, without the usual zip (docs/method.md#data).

    python -m voc12.make_sbd_aug --sbd_root benchmark_RELEASE/dataset --voc12_root VOC2012

SBD (Hariharan et al., "Semantic contours from inverse detectors") stores one
MATLAB file per image, ``<sbd_root>/cls/<id>.mat``, holding a struct ``GTcls``
whose field ``Segmentation`` is the uint8 class-index map (0 background, 1-20).
Every such map is written as an 8-bit palette PNG with the VOC colours to
``<voc12_root>/SegmentationClassAug/<id>.png``. Where VOC 2012 has its own mask
(``SegmentationClass/<id>.png``, with 255 on object borders) that mask is used
instead: VOC's annotation takes precedence, as in the usual zip. The VOC-only
images are included too. Then ``<list_dir>/train_aug.txt`` is written: every
mask's id minus the VOC val ids (``voc12.make_cls_labels.derive_lists``); a
different existing list is kept unless ``--overwrite``.

Each PNG is written atomically and existing PNGs are skipped, so a killed run
resumes where it stopped (``--overwrite`` rewrites them).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import scipy.io
from tqdm import tqdm

from tool import cli
from tool.cli import InputError, MissingFileError
from tool.dataset import color_map, write_lists
from tool.fileio import load_label_png, remove_stale_temps, save_png
from tool.metrics import IGNORE_INDEX
from voc12.make_cls_labels import derive_lists
from voc12.voc import NUM_CLASSES, segmentation_path

logger = logging.getLogger(__name__)

SBD_STRUCT, SBD_FIELD = "GTcls", "Segmentation"


def load_sbd_segmentation(mat_path: str | os.PathLike) -> np.ndarray:
    """The (H, W) uint8 class-index map of one SBD ``cls/<id>.mat`` file (struct ``GTcls``, field ``Segmentation``)."""
    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise MissingFileError(f"SBD mask not found: {mat_path}")
    try:
        mat = scipy.io.loadmat(mat_path, struct_as_record=False, squeeze_me=True)
    except Exception as e:  # scipy raises several types (ValueError, TypeError, MatReadError) for a bad file
        raise InputError(f"{mat_path}: not a readable MATLAB file: {e}") from e
    struct = mat.get(SBD_STRUCT)
    if struct is None or not hasattr(struct, "_fieldnames"):
        found = sorted(k for k in mat if not k.startswith("__"))
        raise InputError(f"{mat_path}: expected a MATLAB struct {SBD_STRUCT!r} (SBD cls/ file), found {found}")
    if SBD_FIELD not in struct._fieldnames:
        raise InputError(f"{mat_path}: struct {SBD_STRUCT} has no field {SBD_FIELD!r} (fields: {struct._fieldnames})")
    seg = np.asarray(getattr(struct, SBD_FIELD))
    if seg.ndim != 2 or seg.dtype.kind not in "ui":
        raise InputError(f"{mat_path}: {SBD_STRUCT}.{SBD_FIELD} must be a 2-d integer map, got {seg.dtype} {seg.shape}")
    _check_classes(seg, mat_path, f"{SBD_STRUCT}.{SBD_FIELD}")
    return seg.astype(np.uint8)


def _check_classes(seg: np.ndarray, path: Path, what: str) -> None:
    bad = (seg >= NUM_CLASSES) & (seg != IGNORE_INDEX)
    if bad.any() or (seg < 0).any():
        raise InputError(f"{path}: {what} has values outside 0..20 and 255")


def load_voc_segmentation(png_path: str | os.PathLike) -> np.ndarray:
    """The (H, W) class-index map of one VOC ``SegmentationClass/<id>.png`` (palette indices, 255 on borders)."""
    try:
        label = load_label_png(png_path)
    except (OSError, ValueError) as e:  # truncated or not a PNG (OSError), an RGB PNG (ValueError)
        raise InputError(f"{png_path}: not a readable VOC label PNG: {e}") from None
    if label.ndim != 2 or label.dtype != np.uint8:
        raise InputError(f"{png_path}: expected an 8-bit (H, W) label PNG, got {label.dtype} {label.shape}")
    _check_classes(label, Path(png_path), "the mask")
    return label


def sources(sbd_root: str | os.PathLike, voc12_root: str | os.PathLike) -> dict[str, tuple[str, Path]]:
    """``{id: ("voc" | "sbd", source file)}`` for every mask, VOC's own taking precedence; sorted by id."""
    cls_dir = Path(sbd_root) / "cls"
    if not cls_dir.is_dir():
        raise MissingFileError(f"--sbd_root: {cls_dir} not found (expected benchmark_RELEASE/dataset with cls/*.mat)")
    found: dict[str, tuple[str, Path]] = {p.stem: ("sbd", p) for p in cls_dir.glob("*.mat")}
    if not found:
        raise MissingFileError(f"--sbd_root: no .mat files in {cls_dir}")
    voc_dir = Path(voc12_root) / "SegmentationClass"
    found.update({p.stem: ("voc", p) for p in voc_dir.glob("*.png")})
    return dict(sorted(found.items()))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SBD cls/*.mat (+ VOC SegmentationClass) -> SegmentationClassAug/")
    parser.add_argument("--sbd_root", required=True, help="SBD folder with cls/ (benchmark_RELEASE/dataset)")
    parser.add_argument("--voc12_root", default="VOC2012", help="VOC2012 devkit folder (output goes here)")
    parser.add_argument("--list_dir", default="voc12", help="where train_aug.txt is written")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing PNGs and a different train_aug.txt")
    return parser


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(args.voc12_root).is_dir():
        raise MissingFileError(f"--voc12_root {args.voc12_root}: not a folder (expected the VOC2012 devkit folder)")
    todo = sources(args.sbd_root, args.voc12_root)
    out_dir = cli.check_output_dir(segmentation_path(args.voc12_root, "x", aug=True).parent, "--voc12_root")
    remove_stale_temps({out_dir}, set(todo))  # hidden temp files of a killed run
    palette = color_map()
    counts = {"sbd": 0, "voc": 0, "skipped": 0}
    for image_id, (kind, src) in tqdm(todo.items(), desc="SegmentationClassAug", unit="mask"):
        out = segmentation_path(args.voc12_root, image_id, aug=True)
        if out.exists() and not args.overwrite:
            counts["skipped"] += 1
            continue
        label = load_sbd_segmentation(src) if kind == "sbd" else load_voc_segmentation(src)
        save_png(out, label, palette)
        counts[kind] += 1
    lists, note = derive_lists(args.voc12_root)
    if note is not None:
        raise InputError(note)
    written = write_lists(args.list_dir, {"train_aug": lists["train_aug"]}, args.overwrite)
    logger.info(
        "SegmentationClassAug: %d masks (%d from SBD, %d from VOC, %d already there); train_aug: %d ids%s",
        len(todo),
        counts["sbd"],
        counts["voc"],
        counts["skipped"],
        len(lists["train_aug"]),
        f", wrote {written[0]}" if written else " (list unchanged)",
    )
    return {**counts, "masks": len(todo), "train_aug": lists["train_aug"]}


if __name__ == "__main__":
    cli.run(main, get_args_parser())
