"""Thresholds from the images alone: `--bg_score auto`, `--crf_alphas auto` (docs/method.md#automatic-thresholds).

The background score is where a pixel's best CAM stops counting as an object. Without masks to sweep it against,
it is read off the CAMs themselves: over every pixel of every image, the best present-class CAM (the value the
background score is compared with, ``argmax([bg, cams])``) has two populations, background near 0 and objects
near 1, and the rule takes Otsu's threshold of their pooled histogram, the split that maximises the variance
between the two, leaving out the pixels where every CAM is clipped to 0. Only CAM files are read (the network's
outputs on the images, restricted to the images' image-level labels); never a mask.

The CRF alphas follow from it: AffinityNet's labels take confident foreground from the low-alpha CRF and confident
background from the high-alpha one, whose background score is ``(1 - max cam) ** alpha``. At the threshold the low
alpha gives the background score 1/2 and the high alpha 1/256 (the published pair 4 / 24 at the published 0.2
gives 0.41 and 0.005; the demo's 1 / 8 at its 0.5 gives 1/2 and 1/256).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tool.cli import InputError, MissingFileError
from tool.fileio import atomic_write_text, load_scores, missing_score_file_message, score_file

logger = logging.getLogger(__name__)

AUTO = "auto"
RULE = "otsu-positive-max-cam"
BINS = 1000  # histogram of [0, 1]: thresholds to 1e-3
FALLBACK = 0.2  # the published background score, when the CAMs carry no split (all one value)
LOW_ALPHA_BG, HIGH_ALPHA_BG = 0.5, 1 / 256  # the CRFs' background score at the threshold
RECORD_NAME = "bg_score.json"


def max_cam_histogram(cams: np.ndarray, bins: int = BINS, with_zeros: bool = False) -> np.ndarray:
    """Counts of the per-pixel best CAM of one image's (K, H, W) scores in ``bins`` bins of [0, 1], (bins,)
    int64, leaving out the pixels where it is 0 or less (unless ``with_zeros``): every class's CAM is clipped
    there, so they are background at any threshold and say nothing about where the split lies. An image with
    no class (K = 0) is all background and adds nothing."""
    if cams.shape[0] == 0:
        return np.zeros(bins, np.int64)
    best = cams.max(axis=0)
    if not with_zeros:
        best = best[best > 0]
    index = np.minimum((np.clip(best, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    return np.bincount(index.ravel(), minlength=bins)


def otsu_threshold(hist: np.ndarray) -> float | None:
    """Otsu's threshold of a histogram of [0, 1]: the split between bins that maximises the between-class
    variance (the middle of the empty bins when several tie), or None when there is nothing to split (empty, or
    every count in one bin)."""
    hist = np.asarray(hist, np.float64)
    total = hist.sum()
    if total == 0 or np.count_nonzero(hist) < 2:
        return None
    centres = (np.arange(hist.size) + 0.5) / hist.size
    weight0 = np.cumsum(hist)[:-1]
    weight1 = total - weight0
    mass0 = np.cumsum(hist * centres)[:-1]
    mass1 = (hist * centres).sum() - mass0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = weight0 * weight1 * (mass0 / weight0 - mass1 / weight1) ** 2
    between[(weight0 == 0) | (weight1 == 0)] = -1.0
    # Splits inside an empty stretch of the histogram all score the same; take the middle of the best stretch.
    first = int(np.argmax(between))
    tied = between >= between[first] * (1 - 1e-12)
    last = first
    while last + 1 < tied.size and tied[last + 1]:
        last += 1
    return ((first + last) / 2 + 1) / hist.size


def bg_score_from_cams(cams_of_images: Iterable[np.ndarray], bins: int = BINS) -> tuple[float, dict]:
    """The rule over the (K, H, W) CAMs of every image: ``(value, statistics)``. All-equal CAMs (all zero, say)
    fall back to :data:`FALLBACK` with a warning; no image at all is an error."""
    hist = np.zeros(bins, np.int64)
    images = clipped = 0
    for cams in cams_of_images:
        counts = max_cam_histogram(cams, bins)
        hist += counts
        images += 1
        clipped += cams[0].size - int(counts.sum()) if cams.shape[0] else 0
    if images == 0:
        raise InputError("--bg_score auto: no CAM files to compute it from (is the list empty?)")
    value = otsu_threshold(hist)
    stats = {"images": images, "pixels": int(hist.sum()), "zero_pixels": clipped, "bins": bins}
    if value is None:
        logger.warning("--bg_score auto: the CAMs have no two populations to split; using %g", FALLBACK)
        return FALLBACK, {**stats, "fallback": True}
    centres = (np.arange(bins) + 0.5) / bins
    below = hist[: round(value * bins)]
    stats["foreground_fraction"] = float(1 - below.sum() / max(hist.sum(), 1))
    stats["mean_below"] = float((below * centres[: below.size]).sum() / max(below.sum(), 1))
    above = hist[round(value * bins) :]
    stats["mean_above"] = float((above * centres[below.size :]).sum() / max(above.sum(), 1))
    return round(value, 6), {**stats, "fallback": False}


def bg_score_from_cam_files(
    cam_dir: str | os.PathLike, ids: Iterable[str], num_fg_classes: int | None = None, allow_pickle: bool = False
) -> tuple[float, dict]:
    """:func:`bg_score_from_cams` over the CAM files (``infer_cls_ser.py --out_cam``) of ``ids`` in ``cam_dir``; a
    missing or bad file is an error naming it."""

    def cams():
        for image_id in dict.fromkeys(ids):
            path = score_file(cam_dir, image_id, allow_pickle)
            if not path.exists():
                raise MissingFileError(missing_score_file_message(path))
            yield load_scores(path, allow_pickle, kind="cam", num_fg_classes=num_fg_classes)[1]

    return bg_score_from_cams(cams())


def crf_alphas_for(bg_score: float) -> list[float]:
    """The low and high CRF alphas whose background score ``(1 - t) ** alpha`` at the threshold ``t`` is
    :data:`LOW_ALPHA_BG` and :data:`HIGH_ALPHA_BG`, rounded to 0.01 (they name the CRF folders)."""
    t = min(max(bg_score, 1e-3), 1 - 1e-3)
    return [round(math.log(bg) / math.log(1 - t), 2) for bg in (LOW_ALPHA_BG, HIGH_ALPHA_BG)]


def record_path(folder: str | os.PathLike) -> Path:
    """``<folder>/bg_score.json``: the record of an automatic choice, next to the outputs it was used for."""
    return Path(folder) / RECORD_NAME


def write_record(folder: str | os.PathLike, value: float, stats: dict, **extra) -> Path:
    """Write ``bg_score.json`` (value, rule, the statistics it used, ``extra`` such as the CRF alphas)."""
    path = record_path(folder)
    record = {"value": value, "rule": RULE, "statistics": stats, **extra}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path
