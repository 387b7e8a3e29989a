"""Confusion matrix and IoU scores for semantic segmentation (docs/method.md#evaluation).

Counting follows the reference evaluation exactly: only pixels whose ground
truth is not the ignore index (255) count; for every class ``c``, ``T_c`` is its
ground-truth pixel count, ``P_c`` its predicted pixel count and ``TP_c`` the
pixels where both agree; ``IoU_c = TP_c / (T_c + P_c - TP_c + 1e-10)`` and the
mIoU is the plain mean over all classes, background included.

A prediction may itself contain the ignore index (255). The reference counts
classes one by one, so such a pixel adds to ``T`` of its ground-truth class but
to no ``P``: it is a miss. To keep that, :func:`confusion` returns one extra
column, "predicted void", next to the square class-by-class matrix.

CAM score maps are scored against a background threshold ``t`` the same way:
the reference stacks ``[t, score of class 1, ..., score of the last class]`` (absent
classes 0) in float32 and takes the argmax, so a pixel is background unless
its best present class scores strictly above ``t`` (a tie goes to background),
and ties between classes go to the lower class index.
:func:`cam_threshold_confusions` gets the confusion for many thresholds from
one look at the scores.

Torch-free on purpose: ``evaluation.py`` must run without importing torch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = 255  # void pixels of the VOC label PNGs: skipped by the scores and the losses (voc12.voc)
EPS = 1e-10  # the reference's guard against empty classes, kept so numbers match to the last bit


def _as_uint8_labels(labels: np.ndarray, what: str, num_classes: int, ignore_index: int) -> np.ndarray:
    """``labels`` as uint8; values that cannot be a class index or the ignore index raise."""
    labels = np.asarray(labels)
    if labels.dtype == np.uint8:
        return labels
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise ValueError(f"{what} must hold integer class indices, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"{what} has values outside 0..{num_classes - 1} and {ignore_index} "
            f"(min {labels.min()}, max {labels.max()})"
        )
    return labels.astype(np.uint8)


def _runs(*arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(last index, length) of every run of consecutive elements equal in all the flat ``arrays``.

    ``np.bincount`` slows down on long runs of one value (each increment waits
    for the previous one to the same bin), and label maps are mostly such runs:
    counting one weighted entry per run is faster and leaves only a few
    thousand entries to check and fold. Returns None when the runs are short
    (under 8 elements on average), where a plain bincount is the faster way.
    """
    size = arrays[0].size
    change = arrays[0][1:] != arrays[0][:-1]
    for values in arrays[1:]:
        change |= values[1:] != values[:-1]
    run_ends = np.flatnonzero(change)
    if run_ends.size > size // 8:
        return None
    run_ends = np.concatenate([run_ends, [size - 1]]) if size else run_ends
    run_lengths = np.empty_like(run_ends)
    run_lengths[:1] = run_ends[:1] + 1
    np.subtract(run_ends[1:], run_ends[:-1], out=run_lengths[1:])
    return run_ends, run_lengths


def _fold(values: np.ndarray, counts: np.ndarray, length: int) -> np.ndarray:
    """Sum ``counts`` per value into ``length`` int64 bins."""
    # float64 weights add whole numbers exactly far beyond any image's pixel count.
    return np.bincount(values, weights=counts, minlength=length).astype(np.int64)


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Pixel counts of one image pair, (num_classes, num_classes + 1) int64.

    Entry ``[g, p]`` counts pixels with ground truth ``g`` and prediction ``p``;
    the last column counts pixels predicted as ``ignore_index`` (void). Pixels
    whose ground truth is ``ignore_index`` are left out. Any other value outside
    ``0..num_classes-1`` in either map raises ``ValueError``.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    if not 0 < num_classes <= ignore_index <= 255:
        raise ValueError(f"need 0 < num_classes <= ignore_index <= 255, got {num_classes}, {ignore_index}")
    n = num_classes
    gt = _as_uint8_labels(gt, "ground truth", n, ignore_index)
    pred = _as_uint8_labels(pred, "prediction", n, ignore_index)
    # Work on (gt, pred) byte pairs packed in 16 bits, as a few thousand
    # (pair, count) runs where possible, so checks and folding cost next to nothing.
    gt, pred = gt.ravel(), pred.ravel()
    runs = _runs(gt, pred)
    if runs is None:
        counts = np.bincount((gt.astype(np.intp) << 8) | pred, minlength=1 << 16)
        pairs = np.flatnonzero(counts)
        counts = counts[pairs]
    else:
        run_ends, counts = runs
        pairs = (gt[run_ends].astype(np.intp) << 8) | pred[run_ends]
    cells = _pair_cells(n, ignore_index)[pairs]
    if (cells < 0).any():
        _check_values(pairs >> 8, "ground truth", n, ignore_index)
        _check_values(pairs & 0xFF, "prediction", n, ignore_index)
    return _fold(cells, counts, n * (n + 1) + 1)[:-1].reshape(n, n + 1)


@functools.lru_cache(maxsize=4)
def _pair_cells(num_classes: int, ignore_index: int) -> np.ndarray:
    """Flat confusion cell of every packed ``gt << 8 | pred`` byte pair, (65536,) read-only.

    Cell ``g * (n + 1) + p``, with ``p = n`` (the void column) for a void
    prediction; one dump cell ``n * (n + 1)`` past the matrix for void ground
    truth; -1 where either value is invalid.
    """
    n = num_classes
    values = np.arange(256)
    gt_values, pred_values = values[:, None], values[None, :]
    cells = gt_values * (n + 1) + np.where(pred_values == ignore_index, n, pred_values)
    cells = np.where(gt_values == ignore_index, n * (n + 1), cells)
    valid = (values < n) | (values == ignore_index)
    cells = np.where(valid[:, None] & valid[None, :], cells, -1).ravel()
    cells.flags.writeable = False
    return cells


def _check_values(values: np.ndarray, what: str, num_classes: int, ignore_index: int) -> None:
    bad = np.unique(values[(values >= num_classes) & (values != ignore_index)])
    if bad.size:
        raise ValueError(f"{what} has values outside 0..{num_classes - 1} and {ignore_index}: {bad.tolist()[:10]}")


def scores_from_confusion(conf: np.ndarray) -> dict:
    """Segmentation scores of an accumulated confusion matrix.

    ``conf`` is (n, n) or (n, n + 1) as returned by :func:`confusion` (rows:
    ground truth; the optional last column: predicted void). Returns fractions
    (not percent): ``IoU``, ``precision``, ``recall`` as (n,) float64 arrays,
    ``mIoU`` (mean over all n classes, the VOC formula), ``mIoU_foreground`` (classes 1..n-1),
    ``present`` (n,) bool: classes with ground-truth pixels, ``mIoU_present`` (mean over those; None
    when there are none), and the reference's diagnostics averaged over the foreground classes:
    ``T/TP``, ``P/TP``, ``FP/ALL`` = (P - TP) / union, ``FN/ALL`` = (T - TP) / union.
    ``T``, ``P``, ``TP`` are the (n,) int64 counts.

    The diagnostics leave out classes without ground-truth pixels: for those the reference divides by
    ~1e-10 and prints numbers like 6.8e13. With every class present (VOC) they are the reference's.
    """
    conf = np.asarray(conf, dtype=np.int64)
    n = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] not in (n, n + 1) or n < 2:
        raise ValueError(f"confusion matrix must be (n, n) or (n, n + 1) with n >= 2, got {conf.shape}")
    gt_count = conf.sum(1)  # T: includes pixels predicted void
    pred_count = conf[:, :n].sum(0)  # P
    true_pos = np.diagonal(conf[:, :n]).copy()  # TP
    union = gt_count + pred_count - true_pos + EPS
    iou = true_pos / union
    present = gt_count > 0
    fg = present.copy()
    fg[0] = False  # the diagnostics are foreground means

    def fg_mean(values: np.ndarray) -> float | None:
        return float(np.mean(values[fg])) if fg.any() else None

    return {
        "IoU": iou,
        "mIoU": float(np.mean(iou)),
        "mIoU_foreground": float(np.mean(iou[1:])),
        "present": present,
        "mIoU_present": float(np.mean(iou[present])) if present.any() else None,
        "T/TP": fg_mean(gt_count / (true_pos + EPS)),
        "P/TP": fg_mean(pred_count / (true_pos + EPS)),
        "FP/ALL": fg_mean((pred_count - true_pos) / union),
        "FN/ALL": fg_mean((gt_count - true_pos) / union),
        "precision": true_pos / (pred_count + EPS),
        "recall": true_pos / (gt_count + EPS),
        "T": gt_count,
        "P": pred_count,
        "TP": true_pos,
    }


def cam_threshold_confusions(
    gt: np.ndarray,
    keys: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Confusion of one image's CAMs at every background threshold at once.

    ``keys`` (K,) are the 0-based foreground class indices of the score maps
    ``scores`` (K, H, W); ``thresholds`` (N,) are >= 0. Returns
    (N, num_classes, num_classes + 1) int64, entry ``i`` equal to
    ``confusion(gt, pred_i)`` where ``pred_i`` is background unless the best
    class scores strictly above ``thresholds[i]``. Comparisons are in float32,
    as in the reference.

    One pass: each pixel's best class and score are found once; the number of
    thresholds below its score says for which thresholds it is foreground, so a
    single histogram over (that number, ground truth, best class) and cumulative
    sums over thresholds give every matrix exactly.
    """
    thresholds = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    keys = np.asarray(keys).reshape(-1)
    scores = np.asarray(scores, dtype=np.float32)
    n = num_classes
    _check_cam_inputs(gt, keys, scores, thresholds, n)
    gt = _as_uint8_labels(gt, "ground truth", n, ignore_index)
    gt_row = _histogram_rows(gt, n, ignore_index)

    order = np.argsort(thresholds, kind="stable")
    num_t = thresholds.size
    best_class, num_above = _best_class(keys, scores, gt.shape, thresholds, order)

    index = num_above
    index *= n + 2
    index += gt_row
    index *= n
    index += best_class
    num_bins = (num_t + 1) * (n + 2) * n
    index = index.ravel()
    runs = _runs(index)
    hist = np.bincount(index, minlength=num_bins) if runs is None else _fold(index[runs[0]], runs[1], num_bins)
    hist = hist.reshape(num_t + 1, n + 2, n)
    if hist[:, n + 1].any():
        _check_values(gt.ravel(), "ground truth", n, ignore_index)
    hist = hist[:, :n, :]  # (num_above, gt, best class)

    # Foreground at sorted threshold i: pixels with num_above > i.
    fg_from = np.cumsum(hist[::-1], axis=0)[::-1]  # fg_from[j] = sum over num_above >= j
    bg_upto = np.cumsum(hist.sum(2), axis=0)  # bg_upto[i] = pixels with num_above <= i, per gt class
    conf_sorted = np.zeros((num_t, n, n + 1), dtype=np.int64)
    conf_sorted[:, :, :n] = fg_from[1:]
    conf_sorted[:, :, 0] += bg_upto[:num_t]
    conf = np.empty_like(conf_sorted)
    conf[order] = conf_sorted
    return conf


def _histogram_rows(gt: np.ndarray, n: int, ignore_index: int) -> np.ndarray:
    """Histogram row of each pixel: its class; void goes to an extra row n that is
    dropped at the end (cheaper than masking every per-pixel array) and an
    invalid value to row n + 1, which must stay empty."""
    gt_row = np.full(256, n + 1, dtype=np.intp)
    gt_row[:n] = np.arange(n)
    gt_row[ignore_index] = n
    return gt_row[gt]


def _check_cam_inputs(gt: np.ndarray, keys: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, n: int) -> None:
    """The argument checks of :func:`cam_threshold_confusions` (ValueError naming the problem)."""
    if thresholds.size and not thresholds.min() >= 0:
        raise ValueError(f"background thresholds must be >= 0, got {thresholds.tolist()}")
    if scores.ndim != 3 or scores.shape[0] != keys.size:
        raise ValueError(f"scores must be (K, H, W) with K = {keys.size} keys, got shape {scores.shape}")
    if scores.shape[1:] != gt.shape and not (keys.size == 0 and scores.shape[1:] == (0, 0)):
        raise ValueError(f"ground truth {gt.shape} and scores {scores.shape[1:]} differ in size")
    if keys.size and not (np.issubdtype(keys.dtype, np.integer) and keys.min() >= 0 and keys.max() < n - 1):
        raise ValueError(f"score keys must be foreground class indices 0..{n - 2}, got {keys.tolist()}")
    if np.unique(keys).size != keys.size:
        raise ValueError(f"score keys must be distinct, got {keys.tolist()}")


def _best_class(
    keys: np.ndarray, scores: np.ndarray, shape: tuple[int, int], thresholds: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's best class as a mask label 1..n-1 (uint8) and how many thresholds lie strictly below its score."""
    num_t = thresholds.size
    best_class = np.zeros(shape, dtype=np.uint8)  # mask label 1..n-1 of the best class
    if keys.size == 0:
        num_above = np.zeros(shape, dtype=np.intp)
    else:
        # The reference stacks maps by class index, so ties go to the lower class:
        # visit classes in that order and replace only on a strictly higher score.
        # (A loop over the few present classes beats np.argmax over axis 0.)
        class_order = np.argsort(keys)
        best_score = scores[class_order[0]].copy()  # (H, W)
        best_class[:] = keys[class_order[0]] + 1
        for k in class_order[1:]:
            higher = scores[k] > best_score
            np.copyto(best_class, np.uint8(keys[k] + 1), where=higher)
            np.maximum(best_score, scores[k], out=best_score)
        if np.isnan(best_score).any():  # np.maximum carries any NaN through to here
            raise ValueError("scores contain NaN")
        # Thresholds strictly below the score: for those the pixel is foreground.
        if num_t == 1:
            num_above = (best_score > thresholds[0]).astype(np.intp)
        else:
            num_above = np.searchsorted(thresholds[order], best_score, side="left").astype(np.intp, copy=False)
    return best_class, num_above
