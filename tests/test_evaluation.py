"""Tests of the evaluation maths (tool/metrics.py) and the evaluation.py script (docs/method.md#evaluation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import evaluation
from tool.dataset import color_map
from tool.fileio import save_png, save_scores
from tool.metrics import cam_threshold_confusions, confusion, scores_from_confusion
from voc12.voc import CLASS_NAMES

CAT_NAMES_WITH_BG = ("background", *CLASS_NAMES)

REPO = Path(__file__).resolve().parents[1]
N = 21


# ----------------------------------------------------------------------------
# Plain implementations written from docs/method.md#evaluation, to compare against
# ----------------------------------------------------------------------------
def naive_counts(pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T, P, TP per class with one boolean mask per class, like the reference."""
    t, p, tp = np.zeros(N, np.int64), np.zeros(N, np.int64), np.zeros(N, np.int64)
    for gt, pred in pairs:
        valid = gt != 255
        for c in range(N):
            t[c] += np.sum((gt == c) & valid)
            p[c] += np.sum((pred == c) & valid)
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
    return t, p, tp


def naive_scores(t, p, tp) -> dict:
    """The reference's formulas; the diagnostics are means over the foreground classes with GT pixels."""
    iou = [tp[c] / (t[c] + p[c] - tp[c] + 1e-10) for c in range(N)]
    fg = [c for c in range(1, N) if t[c] > 0]
    return {
        "IoU": iou,
        "mIoU": np.mean(np.array(iou)),
        "mIoU_present": np.mean(np.array([iou[c] for c in range(N) if t[c] > 0])),
        "T/TP": np.mean(np.array([t[c] / (tp[c] + 1e-10) for c in fg])),
        "P/TP": np.mean(np.array([p[c] / (tp[c] + 1e-10) for c in fg])),
        "FP/ALL": np.mean(np.array([(p[c] - tp[c]) / (t[c] + p[c] - tp[c] + 1e-10) for c in fg])),
        "FN/ALL": np.mean(np.array([(t[c] - tp[c]) / (t[c] + p[c] - tp[c] + 1e-10) for c in fg])),
    }


def naive_cam_pred(keys, scores, t: float) -> np.ndarray:
    """The reference's rule: argmax over a float32 stack [t, class 1..20] (absent classes 0)."""
    stack = np.zeros((N, *scores.shape[1:]), np.float32)
    for k, s in zip(keys, scores, strict=True):
        stack[k + 1] = s
    stack[0] = t
    return stack.argmax(0).astype(np.uint8)


def confusion_from_counts(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return conf.sum(1), conf[:, :N].sum(0), np.diagonal(conf[:, :N])


def random_label_map(rng, shape, blocky: bool, void: bool = True, classes=None) -> np.ndarray:
    """Random class indices (and ~10% void); ``blocky``: constant 4x16 blocks, i.e. long runs like real
    masks (the run-length path of the counting); else independent pixels (the plain bincount path)."""
    classes = np.arange(N) if classes is None else np.asarray(classes)
    small_shape = (shape[0] // 4 + 1, shape[1] // 16 + 1) if blocky else shape
    out = rng.choice(classes, size=small_shape).astype(np.uint8)
    if void:
        out[rng.random(small_shape) < 0.1] = 255
    if blocky:
        out = np.repeat(np.repeat(out, 4, 0), 16, 1)[: shape[0], : shape[1]]
    return out


# ----------------------------------------------------------------------------
# tool/metrics.py
# ----------------------------------------------------------------------------
def test_confusion_hand_computed_3x3():
    gt = np.array([[0, 0, 1], [1, 1, 255], [2, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1], [1, 0, 2], [2, 0, 0]], np.uint8)
    conf = confusion(gt, pred, 21)
    assert conf.shape == (21, 22)
    # Valid pixels (gt != 255): 7. gt 0 -> pred (0, 1); gt 1 -> (1, 1, 0); gt 2 -> (2, 0).
    expected = np.zeros((21, 22), np.int64)
    expected[0, 0] = expected[0, 1] = 1
    expected[1, 1], expected[1, 0] = 2, 1
    expected[2, 2] = expected[2, 0] = 1
    np.testing.assert_array_equal(conf, expected)
    s = scores_from_confusion(conf)
    # class 0: T 2, P 3 (pred 0 at gt 0, 1, 2), TP 1 -> IoU 1 / 4
    # class 1: T 3, P 3 (pred 1 at gt 0, 1, 1), TP 2 -> IoU 2 / 4
    # class 2: T 2, P 1, TP 1 -> IoU 1 / 2 (the pred 2 under gt 255 does not count)
    # classes 3..20 absent everywhere: IoU 0 / 1e-10 = 0
    np.testing.assert_allclose(s["IoU"][:3], [1 / 4, 1 / 2, 1 / 2], rtol=1e-9)
    assert np.all(s["IoU"][3:] == 0)
    assert s["mIoU"] == pytest.approx((1 / 4 + 1 / 2 + 1 / 2) / 21, rel=1e-9)
    assert s["mIoU_foreground"] == pytest.approx((1 / 2 + 1 / 2) / 20, rel=1e-9)
    # only classes 0, 1, 2 have ground-truth pixels
    np.testing.assert_array_equal(np.flatnonzero(s["present"]), [0, 1, 2])
    assert s["mIoU_present"] == pytest.approx((1 / 4 + 1 / 2 + 1 / 2) / 3, rel=1e-9)
    np.testing.assert_array_equal(s["T"][:3], [2, 3, 2])
    np.testing.assert_array_equal(s["P"][:3], [3, 3, 1])
    np.testing.assert_array_equal(s["TP"][:3], [1, 2, 1])
    # precision = TP / P, recall = TP / T
    np.testing.assert_allclose(s["precision"][:3], [1 / 3, 2 / 3, 1], rtol=1e-9)
    np.testing.assert_allclose(s["recall"][:3], [1 / 2, 2 / 3, 1 / 2], rtol=1e-9)


def test_confusion_hand_computed_4x4_void_prediction_and_absent_class():
    gt = np.array(
        [[0, 0, 0, 255], [0, 15, 15, 255], [0, 15, 15, 255], [255, 255, 255, 255]], np.uint8
    )  # 5 background, 4 person (15), 7 void
    pred = np.array([[0, 0, 255, 3], [0, 15, 15, 3], [15, 15, 255, 3], [3, 3, 3, 3]], np.uint8)
    conf = confusion(gt, pred, 21)
    # gt 0: pred 0, 0, 255 (void), 0, 15 -> conf[0, 0] = 3, conf[0, 15] = 1, void column 1
    # gt 15: pred 15, 15, 15, 255 -> conf[15, 15] = 3, void column 1
    # class 3 is predicted only under void ground truth: it counts nowhere.
    assert conf[0, 0] == 3 and conf[0, 15] == 1 and conf[0, 21] == 1
    assert conf[15, 15] == 3 and conf[15, 21] == 1
    assert conf.sum() == 9 and conf[:, 3].sum() == 0
    s = scores_from_confusion(conf)
    # background: T 5 (void prediction still counts in T), P 3, TP 3 -> IoU 3 / 5
    # person: T 4, P 4, TP 3 -> IoU 3 / 5
    assert s["IoU"][0] == pytest.approx(3 / 5, rel=1e-9)
    assert s["IoU"][15] == pytest.approx(3 / 5, rel=1e-9)
    assert s["mIoU"] == pytest.approx(1.2 / 21, rel=1e-9)
    # The 21-class mean keeps the absent classes at IoU 0; the present-class mean is over bg and person.
    assert s["mIoU_present"] == pytest.approx((3 / 5 + 3 / 5) / 2, rel=1e-9)
    # Foreground diagnostics: person is the only foreground class in the ground truth. (Class 3, predicted
    # only under void, and the 18 never-seen classes would add T/TP = 0 / 1e-10 terms to the reference's mean.)
    assert s["T/TP"] == pytest.approx(4 / 3, rel=1e-9)  # person T/TP 4/3
    assert s["P/TP"] == pytest.approx(4 / 3, rel=1e-9)  # person P/TP 4/3
    assert s["FP/ALL"] == pytest.approx(1 / 5, rel=1e-9)  # person (P - TP) / union = 1 / 5
    assert s["FN/ALL"] == pytest.approx(1 / 5, rel=1e-9)  # person (T - TP) / union = 1 / 5


def test_diagnostics_skip_classes_absent_from_ground_truth():
    """A class predicted but absent from the GT has T = TP = 0: the reference's P/TP would be P / 1e-10."""
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 2, 1, 1], [0, 2, 1, 0]], np.uint8)  # class 2 (absent) predicted twice
    s = scores_from_confusion(confusion(gt, pred, 21))
    # class 1: T 4, P 3, TP 3 -> T/TP 4/3, P/TP 1, FP/ALL 0, FN/ALL 1/4 (union 4)
    assert (s["T/TP"], s["P/TP"], s["FP/ALL"], s["FN/ALL"]) == pytest.approx((4 / 3, 1, 0, 1 / 4), rel=1e-9)
    # IoU: bg T 4 P 3 TP 2 -> 2/5; class 1 -> 3/4; class 2 -> 0 (absent, predicted): present mean over bg, 1
    assert s["mIoU_present"] == pytest.approx((2 / 5 + 3 / 4) / 2, rel=1e-9)
    assert s["mIoU"] == pytest.approx((2 / 5 + 3 / 4) / 21, rel=1e-9)
    assert scores_from_confusion(np.zeros((21, 22), np.int64))["mIoU_present"] is None


@pytest.mark.parametrize("blocky", [True, False])
def test_confusion_matches_per_class_loop(blocky):
    rng = np.random.default_rng(1)
    pairs = []
    for i in range(6):
        shape = (37 + i, 53 + 2 * i)
        gt = random_label_map(rng, shape, blocky)
        pred = random_label_map(rng, shape, blocky)  # with 255 too: misses that count in T only
        pairs.append((gt, pred))
    conf = sum(confusion(gt, pred, 21) for gt, pred in pairs)
    t, p, tp = naive_counts(pairs)
    for got, want in zip(confusion_from_counts(conf), (t, p, tp), strict=True):
        np.testing.assert_array_equal(got, want)
    got, want = scores_from_confusion(conf), naive_scores(t, p, tp)
    np.testing.assert_array_equal(got["IoU"], want["IoU"])  # bit-identical, not just close
    for key in ("mIoU", "T/TP", "P/TP", "FP/ALL", "FN/ALL"):
        assert got[key] == want[key], key


def test_confusion_accepts_int64_predictions_and_rejects_bad_values():
    gt = np.array([[0, 1], [255, 20]], np.uint8)
    np.testing.assert_array_equal(confusion(gt, gt.astype(np.int64), 21), confusion(gt, gt, 21))
    with pytest.raises(ValueError, match=r"prediction has values outside 0..20 and 255: \[21\]"):
        confusion(gt, np.array([[0, 21], [0, 0]], np.uint8), 21)
    with pytest.raises(ValueError, match=r"ground truth has values outside 0..20 and 255: \[30\]"):
        confusion(np.array([[0, 30], [0, 0]], np.uint8), gt, 21)
    with pytest.raises(ValueError, match="prediction has values outside"):
        confusion(gt, np.array([[0, -1], [0, 300]]), 21)
    with pytest.raises(ValueError, match="differ in size"):
        confusion(gt, gt[:1], 21)


def test_cam_threshold_tie_goes_to_background():
    gt = np.zeros((2, 2), np.uint8)
    # class 14 (person, label 15) and class 2 (bird, label 3); keys deliberately unsorted
    keys = np.array([14, 2])
    scores = np.array([[[0.2, 0.5], [0.1, 0.3]], [[0.1, 0.5], [0.2, 0.0]]], np.float32)
    conf = cam_threshold_confusions(gt, keys, scores, [0.2], 21)[0]
    # pixel (0,0): best 0.2 == t -> background; (0,1): 0.5 tie between classes -> lower class 3 (bird)
    # pixel (1,0): best 0.2 == t -> background; (1,1): 0.3 > 0.2 -> person 15
    assert conf[0, 0] == 2 and conf[0, 3] == 1 and conf[0, 15] == 1 and conf.sum() == 4
    for t in (0.0, 0.1, 0.2, 0.3, 0.5):
        want = confusion(gt, naive_cam_pred(keys, scores, t), 21)
        np.testing.assert_array_equal(cam_threshold_confusions(gt, keys, scores, [t], 21)[0], want)


def test_cam_threshold_compares_in_float32():
    # float32(0.07) is just above the double 0.07; the reference compares in float32, so it is a tie -> background
    gt = np.zeros((1, 1), np.uint8)
    scores = np.full((1, 1, 1), 0.07, np.float32)
    assert np.float64(scores[0, 0, 0]) > 0.07
    conf = cam_threshold_confusions(gt, [0], scores, [0.07], 21)[0]
    assert conf[0, 0] == 1 and conf[0, 1] == 0


def test_cam_curve_equals_separate_passes():
    rng = np.random.default_rng(2)
    thresholds = evaluation.CURVE_THRESHOLDS
    for i in range(4):
        shape = (29, 41)
        gt = random_label_map(rng, shape, blocky=i % 2 == 0)
        keys = rng.choice(20, size=i + 1, replace=False)
        # Scores on the threshold grid make ties with t common; smooth ones make long runs.
        scores = (rng.integers(0, 61, (keys.size, *shape)) / 100).astype(np.float32)
        if i % 2 == 0:  # constant along rows: long runs
            scores = np.repeat(scores[:, :, :1], shape[1], axis=2)
        curve = cam_threshold_confusions(gt, keys, scores, thresholds, 21)
        assert curve.shape == (60, 21, 22)
        for j, t in enumerate(thresholds):
            np.testing.assert_array_equal(curve[j], cam_threshold_confusions(gt, keys, scores, [t], 21)[0])
            np.testing.assert_array_equal(curve[j], confusion(gt, naive_cam_pred(keys, scores, t), 21))
        shuffled = rng.permutation(60)
        np.testing.assert_array_equal(
            cam_threshold_confusions(gt, keys, scores, np.array(thresholds)[shuffled], 21), curve[shuffled]
        )


def test_cam_without_classes_is_all_background():
    gt = np.array([[0, 5], [255, 5]], np.uint8)
    conf = cam_threshold_confusions(gt, np.zeros(0, np.int64), np.zeros((0, 2, 2), np.float32), [0.1, 0.2], 21)
    assert np.all(conf[:, 0, 0] == 1) and np.all(conf[:, 5, 0] == 2) and conf.sum() == 6


def test_cam_bad_inputs():
    gt = np.zeros((2, 2), np.uint8)
    good = np.zeros((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="differ in size"):
        cam_threshold_confusions(gt, [0], np.zeros((1, 3, 2), np.float32), [0.2], 21)
    with pytest.raises(ValueError, match="foreground class indices"):
        cam_threshold_confusions(gt, [20], good, [0.2], 21)
    with pytest.raises(ValueError, match="distinct"):
        cam_threshold_confusions(gt, [1, 1], np.zeros((2, 2, 2), np.float32), [0.2], 21)
    with pytest.raises(ValueError, match="NaN"):
        cam_threshold_confusions(gt, [0], np.full((1, 2, 2), np.nan, np.float32), [0.2], 21)
    with pytest.raises(ValueError, match=">= 0"):
        cam_threshold_confusions(gt, [0], good, [-0.1], 21)


# ----------------------------------------------------------------------------
# evaluation.py on a fake dataset
# ----------------------------------------------------------------------------
IDS = ["2007_000032", "2007_000039", "2007_000063", "2007_000068", "2007_000121"]


@pytest.fixture()
def dataset(tmp_path):
    """GT and predicted PNGs, CAM .npz files, a reference-style list; returns paths and the raw arrays."""
    rng = np.random.default_rng(3)
    palette = color_map()
    gts, preds, cams = {}, {}, {}
    for i, image_id in enumerate(IDS):
        shape = (24 + i, 32 - i)
        present = rng.choice(np.arange(1, 21), size=1 + i % 3, replace=False)
        gt = random_label_map(rng, shape, blocky=True, classes=[0, *present])
        pred = random_label_map(rng, shape, blocky=i % 2 == 0, void=i == 1, classes=[0, *present, 7])
        keys = present - 1
        scores = (rng.integers(0, 61, (keys.size, *shape)) / 100).astype(np.float32)
        save_png(tmp_path / "gt" / f"{image_id}.png", gt, palette)
        save_png(tmp_path / "pred" / f"{image_id}.png", pred, palette)
        save_scores(tmp_path / "cam" / f"{image_id}.npz", keys, scores, dtype="float32", kind="cam")
        gts[image_id], preds[image_id], cams[image_id] = gt, pred, (keys, scores)
    (tmp_path / "list.txt").write_text("".join(f"/JPEGImages/{i}.jpg\n" for i in IDS))
    return {"root": tmp_path, "gt": gts, "pred": preds, "cam": cams}


def run_main(dataset, *extra: str) -> dict:
    root = dataset["root"]
    argv = ["--list", str(root / "list.txt"), "--gt_dir", str(root / "gt"), "--logfile", str(root / "logs" / "log.txt")]
    if "--predict_dir" not in extra:
        argv += ["--predict_dir", str(root / ("cam" if "npy" in extra else "pred"))]
    return evaluation.main(evaluation.get_args_parser().parse_args([*argv, "--num_workers", "0", *extra]))


def test_main_png_json_and_log(dataset, capsys):
    root = dataset["root"]
    result = run_main(dataset, "--json", str(root / "out" / "res.json"), "--comment", "first run")
    t, p, tp = naive_counts((dataset["gt"][i], dataset["pred"][i]) for i in IDS)
    want = naive_scores(t, p, tp)
    assert result["mIoU"] == 100 * want["mIoU"]
    saved = json.loads((root / "out" / "res.json").read_text())
    assert saved["mIoU"] == result["mIoU"]
    assert list(saved["IoU"]) == list(CAT_NAMES_WITH_BG)
    assert [saved["IoU"][name] for name in CAT_NAMES_WITH_BG] == [100 * v for v in want["IoU"]]
    for key in ("T/TP", "P/TP", "FP/ALL", "FN/ALL"):
        assert saved[key] == want[key], key
    assert saved["mIoU_present"] == pytest.approx(100 * want["mIoU_present"], rel=1e-12)
    assert saved["present_classes"] == [name for name, n in zip(CAT_NAMES_WITH_BG, t, strict=True) if n > 0]
    assert saved["mIoU_foreground"] == pytest.approx(100 * np.mean(want["IoU"][1:]), rel=1e-12)
    assert saved["precision"]["background"] == pytest.approx(100 * tp[0] / p[0], rel=1e-9)
    assert saved["recall"]["background"] == pytest.approx(100 * tp[0] / t[0], rel=1e-9)
    assert saved["num_images"] == len(IDS) and saved["type"] == "png" and saved["t"] is None
    assert "curve" not in saved

    out = capsys.readouterr().out
    assert f"{'background':>11s}:{100 * want['IoU'][0]:7.3f}%" in out
    assert f"{'mIoU':>11s}:{100 * want['mIoU']:7.3f}%  (all 21 classes" in out
    n_present = int(np.sum(t > 0))
    assert f"{'present':>11s}:{100 * want['mIoU_present']:7.3f}%  ({n_present} classes with GT pixels)" in out
    assert f"(means over the {n_present - 1} foreground classes with GT pixels)" in out

    run_main(dataset, "--comment", "second\nrun")
    lines = (root / "logs" / "log.txt").read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("first run") and lines[1].endswith("second run")
    assert f"mIoU {result['mIoU']:.3f}" in lines[0] and lines[0][:4].isdigit()


def test_main_workers_equal_serial(dataset):
    serial = run_main(dataset)
    parallel = run_main(dataset, "--num_workers", "2")
    assert parallel["IoU"] == serial["IoU"] and parallel["mIoU"] == serial["mIoU"]


def naive_cam_scores(dataset, t: float) -> dict:
    pairs = [(dataset["gt"][i], naive_cam_pred(*dataset["cam"][i], t)) for i in IDS]
    return naive_scores(*naive_counts(pairs))


def test_main_npy_threshold_and_curve(dataset, tmp_path):
    result = run_main(dataset, "--type", "npy", "--t", "0.2")
    assert result["mIoU"] == 100 * naive_cam_scores(dataset, 0.2)["mIoU"]
    assert result["t"] == 0.2

    result = run_main(dataset, "--type", "npy", "--curve", "--json", str(tmp_path / "curve.json"))
    saved = json.loads((tmp_path / "curve.json").read_text())
    assert [point["t"] for point in saved["curve"]] == [i / 100 for i in range(60)]
    want = [100 * naive_cam_scores(dataset, i / 100)["mIoU"] for i in range(60)]
    assert [point["mIoU"] for point in saved["curve"]] == want
    best = int(np.argmax(want))
    assert saved["best_t"] == saved["t"] == best / 100 and saved["mIoU"] == want[best]


def test_main_reads_reference_pickled_npy(dataset, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for image_id in IDS:
        keys, scores = dataset["cam"][image_id]
        np.save(legacy / f"{image_id}.npy", {int(k): s for k, s in zip(keys, scores, strict=True)})
    want = run_main(dataset, "--type", "npy", "--t", "0.3")
    got = run_main(dataset, "--type", "npy", "--t", "0.3", "--allow_pickle", "--predict_dir", str(legacy))
    assert got["IoU"] == want["IoU"]
    with pytest.raises(evaluation.EvaluationError, match=r"2007_000032\.npz"):
        run_main(dataset, "--type", "npy", "--t", "0.3", "--predict_dir", str(legacy))
    (legacy / f"{IDS[1]}.npy").unlink()
    with pytest.raises(evaluation.EvaluationError, match=rf"not found: .*{IDS[1]}\.npz \(nor .*{IDS[1]}\.npy\)"):
        run_main(dataset, "--type", "npy", "--t", "0.3", "--allow_pickle", "--predict_dir", str(legacy))


def test_bad_inputs_name_the_file(dataset):
    root = dataset["root"]
    bad = "2007_000063"
    palette = color_map()

    (root / "pred" / f"{bad}.png").unlink()
    with pytest.raises(evaluation.EvaluationError, match=rf"prediction not found: .*pred/{bad}\.png"):
        run_main(dataset)

    save_png(root / "pred" / f"{bad}.png", np.zeros((5, 5), np.uint8), palette)
    with pytest.raises(evaluation.EvaluationError, match=rf"pred/{bad}\.png: prediction is \(5, 5\) but"):
        run_main(dataset)

    pred = dataset["pred"][bad].copy()
    pred[0, 0] = 21
    save_png(root / "pred" / f"{bad}.png", pred, palette)
    with pytest.raises(evaluation.EvaluationError, match=rf"pred/{bad}\.png .*prediction has values .*\[21\]"):
        run_main(dataset)

    Image.fromarray(np.zeros((*pred.shape, 3), np.uint8)).save(root / "pred" / f"{bad}.png")
    with pytest.raises(evaluation.EvaluationError, match=rf"pred/{bad}\.png: cannot read prediction.*RGB"):
        run_main(dataset)

    gt = dataset["gt"][bad].copy()
    gt[1, 1] = 40
    save_png(root / "gt" / f"{bad}.png", gt, palette)
    save_png(root / "pred" / f"{bad}.png", dataset["pred"][bad], palette)
    with pytest.raises(evaluation.EvaluationError, match=rf"gt/{bad}\.png\): ground truth has values .*\[40\]"):
        run_main(dataset)
    with pytest.raises(evaluation.EvaluationError, match=rf"cam/{bad}\.npz .*ground truth has values .*\[40\]"):
        run_main(dataset, "--type", "npy", "--t", "0.1")

    (root / "gt" / f"{bad}.png").unlink()
    with pytest.raises(evaluation.EvaluationError, match=rf"ground truth not found: .*gt/{bad}\.png"):
        run_main(dataset, "--num_workers", "2")  # raised in a worker, re-raised here

    save_png(root / "gt" / f"{bad}.png", dataset["gt"][bad], palette)
    keys, scores = dataset["cam"][bad]
    save_scores(root / "cam" / f"{bad}.npz", keys, scores[:, :-1], kind="cam")
    with pytest.raises(evaluation.EvaluationError, match=rf"cam/{bad}\.npz .*differ in size"):
        run_main(dataset, "--type", "npy", "--curve")
    (root / "cam" / f"{bad}.npz").unlink()
    with pytest.raises(evaluation.EvaluationError, match=rf"score file not found: .*cam/{bad}\.npz"):
        run_main(dataset, "--type", "npy", "--curve")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--type", "npy"], "needs a background threshold"),
        (["--t", "0.2"], "only apply to --type npy"),
        (["--type", "npy", "--t", "0.2", "--curve"], "not both"),
        (["--list", "/nonexistent/list.txt"], "--list: image list not found"),
    ],
)
def test_bad_flags(dataset, flags, message):
    with pytest.raises(evaluation.EvaluationError, match=message):
        run_main(dataset, *flags)


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "evaluation.py"), *argv], capture_output=True, text=True)


def test_cli_error_exits_nonzero_without_traceback(dataset):
    root = dataset["root"]
    (root / "pred" / f"{IDS[2]}.png").unlink()
    proc = run_cli(
        "--list",
        str(root / "list.txt"),
        "--gt_dir",
        str(root / "gt"),
        "--predict_dir",
        str(root / "pred"),
        "--logfile",
        "",
    )
    assert proc.returncode == 1
    assert f"prediction not found: {root / 'pred' / IDS[2]}.png" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_does_not_import_torch(dataset):
    root = dataset["root"]
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['evaluation.py', '--list', {str(root / 'list.txt')!r}, '--gt_dir', {str(root / 'gt')!r},\n"
        f"            '--predict_dir', {str(root / 'cam')!r}, '--type', 'npy', '--curve', '--logfile', '']\n"
        f"runpy.run_path({str(REPO / 'evaluation.py')!r}, run_name='__main__')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "best background threshold" in proc.stdout
