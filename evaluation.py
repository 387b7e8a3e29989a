"""Evaluate predicted masks or CAM score files against ground truth (docs/method.md#evaluation).

Scores are the reference's: per pixel with ground truth != 255, counts over the
dataset's classes (its descriptor's ``num_classes``, background included) accumulated over the list;
IoU_c = TP / (T + P - TP + 1e-10) and the mIoU is the mean over all classes
(maths in ``tool/metrics.py``). The ground truth is ``--gt_dir/<id>.png`` or, without it,
the masks of ``--dataset`` (docs/datasets.md).

``--type png`` reads prediction masks (class indices, palette or grey PNGs).
A prediction pixel of 255 is kept as the reference counts it: it adds to T of
its ground-truth class and to no P, i.e. it is a miss. ``--type npy`` reads CAM
score files (ours: ``.npz``; the reference's pickled ``.npy`` with
``--allow_pickle``) and predicts background unless the best present class
scores strictly above ``--t``; ``--curve`` scores every t in 0.00..0.59 in one
pass over the files.

Torch-free: this script must not import torch (it runs on machines without it
and starts fast).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from engine import flags
from tool import cli, layout
from tool.cli import InputError
from tool.dataset import load_img_id_list
from tool.fileio import atomic_write_text, load_label_png, load_scores, missing_score_file_message, score_file
from tool.metrics import IGNORE_INDEX, cam_threshold_confusions, confusion, scores_from_confusion

CURVE_THRESHOLDS = tuple(i / 100 for i in range(60))  # the reference's curve: t = 0.00, 0.01, ..., 0.59
DEFAULT_LIST = Path(__file__).resolve().parent / "voc12" / "train.txt"
T = TypeVar("T")


class EvaluationError(InputError):
    """A bad input (missing file, size mismatch, invalid value); the message names the file."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="mIoU of predicted masks or CAM score files (docs/method.md#evaluation)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        script="evaluation",
    )
    flags.add_dataset_flags(parser)
    parser.add_argument("--list", default=str(DEFAULT_LIST), help="image list: bare ids or /JPEGImages/<id>.jpg lines")
    parser.add_argument("--predict_dir", default="out_rw", help="folder of <id>.png masks or score files")
    parser.add_argument(
        "--gt_dir",
        help="folder of ground-truth <id>.png palette masks (class indices, 255 = void); default: the masks of "
        "--dataset in --dataset_root (VOC2012/SegmentationClass for voc12)",
    )
    parser.add_argument(
        "--logfile",
        default="evallog.txt",
        help="append one timestamped line with the comment and mIoU here ('' = no log)",
    )
    parser.add_argument("--comment", default="", help="free text written to the log line")
    parser.add_argument(
        "--type",
        default="png",
        choices=["png", "npy"],
        help="png: prediction masks; npy: CAM score files scored with a background threshold (--t or --curve)",
    )
    parser.add_argument(
        "--t",
        type=cli.unit_float,
        help="background threshold for --type npy: background unless a present class scores above t",
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="--type npy: score every t in 0.00..0.59 (step 0.01) in one pass, report the best",
    )
    flags.add_allow_pickle_flag(
        parser, "--type npy: also read the reference's pickled <id>.npy dicts when no <id>.npz exists"
    )
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument(
        "--num_workers",
        default=cli.usable_cpus(),
        type=cli.worker_count,
        help="processes decoding files in parallel (0 or 1: in this process); default: the CPUs this process may use",
    )
    return parser


def gt_in_dir(gt_dir: str | os.PathLike, image_id: str) -> Path:
    """``<gt_dir>/<id>.png``: the ground truth of ``--gt_dir``."""
    return layout.label_png(gt_dir, image_id)


def image_confusion(
    image_id: str,
    predict_dir: str | os.PathLike,
    gt_path_of: Callable[[str], Path],
    pred_type: str = "png",
    thresholds: tuple[float, ...] = (),
    allow_pickle: bool = False,
    *,
    num_classes: int,
) -> np.ndarray:
    """Confusion of one image, (N, num_classes, num_classes + 1) int64: N = 1 for png, one per threshold for npy.

    ``gt_path_of(id)`` is the image's ground-truth PNG. Raises :class:`EvaluationError` naming the file for any
    bad input.
    """
    gt_path = gt_path_of(image_id)
    gt = _read(load_label_png, gt_path, "ground truth")
    if pred_type == "png":
        pred_path = layout.label_png(predict_dir, image_id)
        pred = _read(load_label_png, pred_path, "prediction")
        if pred.shape != gt.shape:
            raise EvaluationError(f"{pred_path}: prediction is {pred.shape} but ground truth {gt_path} is {gt.shape}")
        try:
            return confusion(gt, pred, num_classes, IGNORE_INDEX)[None]
        except ValueError as e:  # an out-of-range value; the message says in which of the two
            raise EvaluationError(f"{pred_path} (ground truth {gt_path}): {e}") from None
    pred_path = score_file(predict_dir, image_id, allow_pickle)
    if not pred_path.is_file() and allow_pickle:
        raise EvaluationError(f"score file not found: {pred_path.with_suffix('.npz')} (nor {pred_path})")
    if not pred_path.is_file():
        raise EvaluationError(missing_score_file_message(pred_path))
    read_cam = functools.partial(load_scores, allow_pickle=allow_pickle, kind="cam", num_fg_classes=num_classes - 1)
    keys, scores = _read(read_cam, pred_path, "score file")
    try:
        return cam_threshold_confusions(gt, keys, scores, thresholds, num_classes, IGNORE_INDEX)
    except ValueError as e:
        raise EvaluationError(f"{pred_path} (ground truth {gt_path}): {e}") from None


def _read(loader: Callable[[Path], T], path: Path, what: str) -> T:
    if not path.is_file():
        raise EvaluationError(f"{what} not found: {path}")
    try:
        return loader(path)
    except InputError as e:  # the message names the file already
        raise EvaluationError(str(e)) from None
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{path}: cannot read {what}: {e}") from None


def _chunk_confusion(image_ids: list[str], **kwargs) -> np.ndarray:
    total = image_confusion(image_ids[0], **kwargs)
    for image_id in image_ids[1:]:
        total += image_confusion(image_id, **kwargs)
    return total


def evaluate(
    image_ids: list[str],
    predict_dir: str | os.PathLike,
    gt_path_of: Callable[[str], Path],
    pred_type: str = "png",
    thresholds: tuple[float, ...] = (),
    allow_pickle: bool = False,
    num_workers: int = 0,
    *,
    num_classes: int,
) -> np.ndarray:
    """Confusion summed over ``image_ids``, (N, num_classes, num_classes + 1) int64 (see :func:`image_confusion`).

    With ``num_workers`` > 1 the images are split into chunks decoded by a
    process pool (decoding dominates; each chunk returns one summed matrix).
    Integer sums do not depend on the order, so the result equals the serial one.
    """
    if not image_ids:
        raise EvaluationError("the image list is empty")
    work = functools.partial(
        _chunk_confusion,
        predict_dir=predict_dir,
        gt_path_of=gt_path_of,
        pred_type=pred_type,
        thresholds=tuple(thresholds),
        allow_pickle=allow_pickle,
        num_classes=num_classes,
    )
    if num_workers <= 1:
        return work(image_ids)
    # Small chunks keep the workers busy to the end (the last chunk is the idle
    # time), while the per-chunk cost of passing ids and a matrix stays negligible.
    chunk_size = max(1, min(16, len(image_ids) // (4 * num_workers)))
    chunks = [image_ids[i : i + chunk_size] for i in range(0, len(image_ids), chunk_size)]
    with multiprocessing.Pool(min(num_workers, len(chunks))) as pool:
        return sum(pool.imap_unordered(work, chunks))


def summarize(conf: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """JSON-ready scores of one confusion matrix with rows ``class_names`` (background first): IoU, mIoU (all
    classes), mIoU_present (the classes with ground-truth pixels, named in present_classes), precision, recall in
    percent; the reference's T/TP, P/TP, FP/ALL, FN/ALL (means over the present foreground classes) as ratios."""
    scores = scores_from_confusion(conf)
    per_class = {
        key: dict(zip(class_names, (100 * scores[key]).tolist(), strict=True)) for key in ("IoU", "precision", "recall")
    }
    present = [name for name, p in zip(class_names, scores["present"], strict=True) if p]
    return {
        "mIoU": 100 * scores["mIoU"],
        "mIoU_foreground": 100 * scores["mIoU_foreground"],
        "mIoU_present": None if scores["mIoU_present"] is None else 100 * scores["mIoU_present"],
        "present_classes": present,
        "IoU": per_class["IoU"],
        "T/TP": scores["T/TP"],
        "P/TP": scores["P/TP"],
        "FP/ALL": scores["FP/ALL"],
        "FN/ALL": scores["FN/ALL"],
        "precision": per_class["precision"],
        "recall": per_class["recall"],
    }


def format_table(result: dict) -> str:
    """The reference's printout (class IoUs two per line, mIoU, diagnostics) plus the present-class mIoU."""
    cells = [f"{name:>11s}:{iou:7.3f}%" for name, iou in result["IoU"].items()]
    lines = ["\t".join(cells[i : i + 2]) for i in range(0, len(cells), 2)]
    lines.append("=" * 54)
    n_all, present = len(result["IoU"]), result["present_classes"]
    lines.append(f"{'mIoU':>11s}:{result['mIoU']:7.3f}%  (all {n_all} classes, the VOC formula)")
    lines.append(f"{'fg mIoU':>11s}:{result['mIoU_foreground']:7.3f}%")
    if result["mIoU_present"] is not None:
        lines.append(f"{'present':>11s}:{result['mIoU_present']:7.3f}%  ({len(present)} classes with GT pixels)")
    n_fg = len(present) - ("background" in present)
    if n_fg:
        diagnostics = "  ".join(f"{key} {result[key]:.4f}" for key in ("T/TP", "P/TP", "FP/ALL", "FN/ALL"))
        lines.append(f"{diagnostics}  (means over the {n_fg} foreground classes with GT pixels)")
    return "\n".join(lines)


def append_log(logfile: str | os.PathLike, comment: str, summary: str) -> None:
    """One line per run, appended: timestamp, summary, comment (newlines flattened to keep it one line)."""
    stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    line = "\t".join([stamp, summary, " ".join(comment.split())])
    Path(logfile).parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as f:
        f.write(line + "\n")


def check_flags(args: argparse.Namespace) -> None:
    """The flag combinations ``main`` refuses, before any file is read."""
    if args.type == "png" and (args.t is not None or args.curve or args.allow_pickle):
        raise EvaluationError("--t, --curve and --allow_pickle only apply to --type npy")
    if args.type == "npy" and args.t is None and not args.curve:
        raise EvaluationError("--type npy needs a background threshold: --t T or --curve")
    if args.t is not None and args.curve:
        raise EvaluationError("give either --t or --curve, not both")
    if args.t is not None and not args.t >= 0:
        raise EvaluationError(f"--t must be >= 0 (absent classes score 0 in the reference), got {args.t}")


def curve_result(conf: np.ndarray, thresholds: tuple[float, ...], names: tuple[str, ...]) -> dict:
    """Print the mIoU of every background threshold; the scores at the best (by mIoU, the reference's choice)
    with the whole curve."""
    curve = [{"t": t, **summarize(c, names)} for t, c in zip(thresholds, conf, strict=True)]
    best = int(np.argmax([point["mIoU"] for point in curve]))  # first best: the lowest t on ties
    print(f"{'t':>5s} {'mIoU':>8s} {'fg mIoU':>8s} {'present':>8s}")
    for point in curve:
        present = point["mIoU_present"] if point["mIoU_present"] is not None else float("nan")
        print(f"{point['t']:5.2f} {point['mIoU']:7.3f}% {point['mIoU_foreground']:7.3f}% {present:7.3f}%")
    result = {**summarize(conf[best], names), "t": thresholds[best], "best_t": thresholds[best]}
    result["curve"] = [{key: point[key] for key in ("t", "mIoU", "mIoU_foreground", "mIoU_present")} for point in curve]
    return result


def main(args: argparse.Namespace) -> dict:
    check_flags(args)
    try:
        image_ids = load_img_id_list(args.list)
    except (OSError, ValueError) as e:
        raise EvaluationError(f"--list: {e}") from None
    # Only the dataset's classes and mask paths are read: a missing mask is reported by name.
    info = flags.dataset_of(args, check=False)
    gt_path_of = functools.partial(gt_in_dir, args.gt_dir) if args.gt_dir else info.mask_path
    names = info.names_with_background

    thresholds = CURVE_THRESHOLDS if args.curve else (args.t,) if args.type == "npy" else ()
    conf = evaluate(
        image_ids,
        args.predict_dir,
        gt_path_of,
        args.type,
        thresholds,
        args.allow_pickle,
        args.num_workers,
        num_classes=info.num_classes,
    )

    if args.curve:
        result = curve_result(conf, thresholds, names)
        setting = f"npy curve, best t={result['t']:.2f}"
    else:
        result = {**summarize(conf[0], names), "t": args.t if args.type == "npy" else None}
        setting = f"npy t={args.t}" if args.type == "npy" else "png"
    setting = f"{args.predict_dir} ({setting})"
    result.update(
        num_images=len(image_ids),
        type=args.type,
        list=str(args.list),
        predict_dir=str(args.predict_dir),
        gt_dir=str(args.gt_dir) if args.gt_dir else None,
        dataset=info.name,
        comment=args.comment,
    )

    print(format_table(result))
    if args.curve:
        print(f"best background threshold t = {result['t']:.2f}: mIoU {result['mIoU']:.3f}%")
    if args.logfile:
        present = "n/a" if result["mIoU_present"] is None else f"{result['mIoU_present']:.3f}"
        append_log(args.logfile, args.comment, f"{setting}\tmIoU {result['mIoU']:.3f}\tpresent {present}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    cli.run(main, get_args_parser())
