"""Thresholds without ground truth (docs/method.md#automatic-thresholds): the rule, its record, its scripts."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import infer_aff
import infer_cls_ser
from tests.test_infer_cls_ser import make_args, toy  # noqa: F401 (a fixture)
from tool import autothreshold
from tool.cli import InputError, MissingFileError
from tool.fileio import load_label_png, load_scores, save_scores

ROOT = Path(__file__).resolve().parents[1]


def two_populations(rng, n_images=6, low=(0.0, 0.15), high=(0.75, 1.0)):
    """CAMs whose best-class values are background in ``low`` or object in ``high``: any threshold between the
    two ranges separates them, so the rule must land in that gap."""
    for _ in range(n_images):
        cams = rng.uniform(*low, size=(2, 24, 32)).astype(np.float32)
        obj = np.zeros((24, 32), bool)
        y, x = rng.integers(0, 12), rng.integers(0, 16)
        obj[y : y + 10, x : x + 14] = True
        cams[int(rng.integers(0, 2)), obj] = rng.uniform(*high, size=obj.sum())
        yield cams


def test_otsu_on_two_populations_lands_in_the_gap():
    value, stats = autothreshold.bg_score_from_cams(two_populations(np.random.default_rng(0)))
    assert 0.15 < value < 0.75
    assert stats["images"] == 6 and stats["pixels"] == 6 * 24 * 32 and not stats["fallback"]
    assert stats["mean_below"] < 0.15 < 0.75 < stats["mean_above"]
    assert 0.0 < stats["foreground_fraction"] < 0.5


def test_otsu_hand_values():
    # Two bins of mass 5 at the ends of a 4-bin histogram: the splits at 0.25, 0.5 and 0.75 are equally good;
    # the middle one is taken.
    assert autothreshold.otsu_threshold(np.array([5, 0, 0, 5])) == 0.5
    # Mass 1 at 0.125, 1 at 0.375, 6 at 0.875: the split after bin 1 (w0 w1 (mu0 - mu1)^2 = 2 * 6 * (0.25 -
    # 0.875)^2 = 4.69) beats the split after bin 0 (1 * 7 * (0.125 - 0.804)^2 = 3.22); the split after the empty
    # bin 2 ties with it, so the threshold is the middle of bin 2.
    assert autothreshold.otsu_threshold(np.array([1, 1, 0, 6])) == 0.625
    assert autothreshold.otsu_threshold(np.zeros(4)) is None
    assert autothreshold.otsu_threshold(np.array([0, 7, 0, 0])) is None


def test_histogram_ignores_images_without_classes_and_clips():
    assert autothreshold.max_cam_histogram(np.zeros((0, 5, 5), np.float32), bins=10).sum() == 0
    cams = np.array([[[0.0, 1.0, 0.55, 0.0]], [[0.2, 0.3, 0.56, -0.1]]], np.float32)
    hist = autothreshold.max_cam_histogram(cams, bins=10)
    assert hist.tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 1]  # per pixel max: 0.2, 1.0 (last bin), 0.56; 0 left out
    assert autothreshold.max_cam_histogram(cams, bins=10, with_zeros=True).tolist() == [1, 0, 1, 0, 0, 1, 0, 0, 0, 1]


def test_clipped_pixels_do_not_move_the_threshold():
    """Pixels whose every CAM is clipped to 0 are left out: adding any number of them changes nothing, while
    the same mass just above 0 drags Otsu's threshold down."""
    rng = np.random.default_rng(2)
    images = list(two_populations(rng, low=(0.2, 0.4)))
    value, stats = autothreshold.bg_score_from_cams(images)
    padded = [np.concatenate([c, np.zeros_like(c)], axis=2) for c in images]  # twice the pixels, half of them 0
    assert autothreshold.bg_score_from_cams(padded)[0] == value
    assert autothreshold.bg_score_from_cams(padded)[1]["zero_pixels"] == stats["pixels"] == 6 * 24 * 32
    near_zero = [np.concatenate([c, np.full_like(c, 1e-3)], axis=2) for c in images]
    assert autothreshold.bg_score_from_cams(near_zero)[0] < value


def test_degenerate_inputs_are_an_error_or_the_documented_fallback():
    with pytest.raises(InputError, match="no CAM files"):
        autothreshold.bg_score_from_cams([])
    value, stats = autothreshold.bg_score_from_cams([np.zeros((1, 8, 8), np.float32)] * 3)  # all-zero CAMs
    assert value == autothreshold.FALLBACK and stats["fallback"]
    value, _ = autothreshold.bg_score_from_cams([np.zeros((0, 8, 8), np.float32)])  # an image with no class
    assert value == autothreshold.FALLBACK
    single = next(two_populations(np.random.default_rng(1), n_images=1))  # a single image still splits
    value, _ = autothreshold.bg_score_from_cams([single])
    assert 0.15 < value < 0.75 and not math.isnan(value)


def test_cam_files_missing_or_of_another_kind(tmp_path):
    with pytest.raises(MissingFileError, match="a.npz"):
        autothreshold.bg_score_from_cam_files(tmp_path, ["a"], 20)
    save_scores(tmp_path / "a.npz", np.array([0, 1]), np.ones((2, 4, 4), np.float32), kind="crf")
    with pytest.raises(InputError, match="a.npz"):
        autothreshold.bg_score_from_cam_files(tmp_path, ["a"], 20)


def test_crf_alphas_follow_the_threshold():
    assert autothreshold.crf_alphas_for(0.5) == [1.0, 8.0]  # the demo's pair at its threshold
    low, high = autothreshold.crf_alphas_for(0.2)
    assert (0.8**low, 0.8**high) == pytest.approx((0.5, 1 / 256), rel=1e-2)
    assert autothreshold.crf_alphas_for(0.0)[0] > 0 and math.isfinite(autothreshold.crf_alphas_for(1.0)[1])


def test_infer_cls_ser_auto_reads_no_mask(toy, tmp_path):  # noqa: F811
    """--bg_score auto --crf_alphas auto on a devkit whose masks are gone: the record, the CRF folders of the
    chosen alphas and predictions thresholded at the chosen value."""
    for masks in ("SegmentationClass", "SegmentationClassAug"):  # this module's own copy of the fixture
        shutil.rmtree(toy["root"] / masks, ignore_errors=True)
    out = tmp_path / "out"
    args = make_args(toy, out, "--bg_score", "auto", "--crf_alphas", "auto", "--crf_workers", "0")
    args.out_vis = None
    args.score_dtype = "float32"
    summary = infer_cls_ser.main(args)
    record = json.loads((out / "cam" / "bg_score.json").read_text())
    assert record["rule"] == autothreshold.RULE and record["auto"] is True
    assert record["value"] == summary["bg_score"] and 0 < record["value"] < 1
    assert record["crf_alphas"] == autothreshold.crf_alphas_for(record["value"])
    assert record["statistics"]["images"] == len(toy["ids"])
    value, _ = autothreshold.bg_score_from_cam_files(out / "cam", toy["ids"], 20)
    assert value == record["value"]
    for image_id in toy["ids"]:
        keys, cams = load_scores(out / "cam" / f"{image_id}.npz", kind="cam")
        full = np.zeros((20, *cams.shape[1:]), np.float32)
        full[keys] = cams
        expected = infer_cls_ser.cam_prediction(full, value)
        assert np.array_equal(load_label_png(out / "pred" / f"{image_id}.png"), expected)
        for alpha in record["crf_alphas"]:
            assert (out / f"crf_{float(alpha)}" / f"{image_id}.npz").is_file()


def test_infer_aff_auto_and_bad_flags(toy, tmp_path):  # noqa: F811
    parser = infer_aff.get_args_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--weights", "w", "--cam_dir", "c", "--out_rw", "o", "--bg_score", "1.5"])
    assert parser.parse_args(["--weights", "w", "--cam_dir", "c", "--out_rw", "o", "--bg_score", "auto"]).bg_score == (
        "auto"
    )
    result = subprocess.run(
        [sys.executable, "infer_cls_ser.py", "--weights", "w.pth", "--bg_score", "auto", "--out_cam_pred", "p"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "--bg_score auto needs --out_cam" in result.stderr
    result = subprocess.run(
        [sys.executable, "infer_cls_ser.py", "--weights", "w.pth", "--crf_alphas", "auto", "4", "--out_cam", "c"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "'auto' stands alone" in result.stderr
