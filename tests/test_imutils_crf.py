"""Tests of tool/imutils.py and tool/crf.py (docs/method.md#ssenet-training, #ssenet-inference, #affinitynet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from network import resnet38d
from tool import imutils
from tool.crf import crf_inference, crf_scores_with_alpha

DATA = Path(__file__).parent / "data"


def coord_image(h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 whose pixel (y, x) is (y + 1, x + 1, 200): never 0, so padding is visible."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy + 1, xx + 1, np.full_like(yy, 200)], axis=-1).astype(np.uint8)


# ---------------------------------------------------------------- normalisation


def test_normalize_known_values_and_round_trip():
    img = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    out = resnet38d.normalize(img)
    assert out.dtype == np.float32 and out.shape == (1, 2, 3)
    # black: -mean/std = (-0.485/0.229, -0.456/0.224, -0.406/0.225) = (-2.1179, -2.0357, -1.8044)
    np.testing.assert_allclose(out[0, 0], [-2.117904, -2.035714, -1.804444], atol=1e-5)
    # white: (1 - mean)/std = (2.2489, 2.4286, 2.64)
    np.testing.assert_allclose(out[0, 1], [2.248908, 2.428571, 2.64], atol=1e-5)

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resnet38d.denormalize(resnet38d.normalize(img)), img)


def test_normalize_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        resnet38d.normalize(np.zeros((4, 4), np.uint8))


def test_hwc_to_chw():
    img = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    chw = imutils.hwc_to_chw(img)
    assert chw.shape == (3, 2, 3) and chw.flags.c_contiguous
    assert chw[2, 1, 0] == img[1, 0, 2]


# ---------------------------------------------------------------- resizing


def test_resize_long_sizes():
    wide = Image.new("RGB", (53, 37))
    assert imutils.resize_long(wide, 448).size == (448, 313)  # 37 * 448 / 53 = 312.75 -> 313
    tall = Image.new("RGB", (30, 80))
    assert imutils.resize_long(tall, 60).size == (22, 60)  # 30 * 60 / 80 = 22.5 -> 22 (half to even)
    square = Image.new("RGB", (10, 10))
    assert imutils.resize_long(square, 25).size == (25, 25)


def test_random_resize_long_covers_inclusive_range():
    rng = np.random.default_rng(0)
    img = Image.new("RGB", (8, 4))
    longs = {imutils.random_resize_long(img, 5, 7, rng).size[0] for _ in range(60)}
    assert longs == {5, 6, 7}


# ---------------------------------------------------------------- crops and flips


def test_random_crop_keeps_image_and_label_aligned():
    img = coord_image(50, 60)
    label = np.arange(50 * 60, dtype=np.int32).reshape(50, 60)  # label = y * 60 + x
    for seed in range(10):
        rng = np.random.default_rng(seed)
        img_c, label_c = imutils.random_crop(img, label, crop_size=32, rng=rng)
        assert img_c.shape == (32, 32, 3) and img_c.dtype == np.uint8 and label_c.dtype == np.int32
        y, x = img_c[..., 0].astype(int) - 1, img_c[..., 1].astype(int) - 1
        np.testing.assert_array_equal(label_c, y * 60 + x)
        # one contiguous window: y grows by 1 per row, x by 1 per column
        assert np.all(np.diff(y, axis=0) == 1) and np.all(np.diff(x, axis=1) == 1)

        img_f, label_f = imutils.random_hflip(img_c, label_c, rng=rng)
        y, x = img_f[..., 0].astype(int) - 1, img_f[..., 1].astype(int) - 1
        np.testing.assert_array_equal(label_f, y * 60 + x)


def test_random_hflip_flips_both_or_neither():
    img = coord_image(4, 6)
    label = np.tile(np.arange(6), (4, 1))
    flipped = 0
    for seed in range(20):
        img_f, label_f = imutils.random_hflip(img, label, rng=np.random.default_rng(seed))
        if img_f[0, 0, 1] == 6:  # x + 1 of the last column
            flipped += 1
            np.testing.assert_array_equal(label_f[0], [5, 4, 3, 2, 1, 0])
        else:
            np.testing.assert_array_equal(label_f[0], [0, 1, 2, 3, 4, 5])
    assert 0 < flipped < 20


def test_random_crop_pads_small_image_at_random_offsets():
    img = coord_image(5, 7)  # h 5, w 7 in a 10 x 10 canvas: top in 0..5, left in 0..3
    seen = set()
    for seed in range(300):
        (out,) = imutils.random_crop(img, crop_size=10, rng=np.random.default_rng(seed))
        rows, cols = np.nonzero(out[..., 2])
        top, left = rows.min(), cols.min()
        assert (rows.max() - top, cols.max() - left) == (4, 6)
        np.testing.assert_array_equal(out[top : top + 5, left : left + 7], img)
        assert out[..., 2].sum() == 200 * 35  # nothing else is non-zero
        seen.add((top, left))
    assert seen == {(t, l) for t in range(6) for l in range(4)}


def test_random_crop_mixed_axes():
    # 12 rows > crop 8 (cut), 6 columns < crop 8 (pasted)
    img = coord_image(12, 6)
    for seed in range(20):
        (out,) = imutils.random_crop(img, crop_size=8, rng=np.random.default_rng(seed))
        cols = np.nonzero(out[0, :, 2])[0]
        left = cols.min()
        assert len(cols) == 6 and 0 <= left <= 2
        top_row = out[0, left, 0] - 1
        assert 0 <= top_row <= 4
        np.testing.assert_array_equal(out[:, left : left + 6], img[top_row : top_row + 8])


def test_random_crop_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="same height and width"):
        imutils.random_crop(np.zeros((4, 5)), np.zeros((4, 6)), crop_size=3, rng=np.random.default_rng(0))


def test_center_crop_offsets():
    img = coord_image(5, 8)
    # crop 6: rows 5 < 6 -> pasted at round(1 / 2) = 0 (half to even); cols 8 > 6 -> cut at round(2 / 2) = 1
    (out,) = imutils.center_crop(img, crop_size=6)
    np.testing.assert_array_equal(out[:5], img[:, 1:7])
    assert not out[5].any()
    # crop 3: rows cut at round(2 / 2) = 1, cols cut at round(5 / 2) = 2
    (out,) = imutils.center_crop(img, crop_size=3)
    np.testing.assert_array_equal(out, img[1:4, 2:5])


# ---------------------------------------------------------------- pooling


def test_pool_scores_multiple_of_block():
    scores = np.arange(16 * 16, dtype=np.float32).reshape(16, 16, 1)  # value y * 16 + x
    pooled = imutils.pool_scores(scores, 8)
    # block (0, 0): mean y = mean x = 3.5 -> 16 * 3.5 + 3.5 = 59.5; +8 per block right, +128 per block down
    np.testing.assert_allclose(pooled[..., 0], [[59.5, 67.5], [187.5, 195.5]])


def test_pool_scores_pads_with_zeros():
    pooled = imutils.pool_scores(np.ones((10, 9, 2), np.float32), 8)
    assert pooled.shape == (2, 2, 2) and pooled.dtype == np.float32
    # ones per 64-cell block: 64, 8 x 1 = 8, 2 x 8 = 16, 2 x 1 = 2
    np.testing.assert_allclose(pooled[..., 1], [[1.0, 0.125], [0.25, 0.03125]])


# ---------------------------------------------------------------- multi-scale inputs


def test_msf_inputs_match_reference():
    ref = np.load(DATA / "msf_inputs.npz", allow_pickle=False)
    scales = (1.0, 0.5, 1.5, 2.0)
    out = imutils.msf_inputs(Image.fromarray(ref["image"]), scales, resnet38d.normalize)
    assert len(out) == 4
    for s, pair in zip(scales, out, strict=True):
        assert pair.dtype == np.float32 and pair.shape == (2, *ref[f"scale_{s}"].shape)
        np.testing.assert_allclose(pair[0], ref[f"scale_{s}"], atol=1e-5)
        np.testing.assert_allclose(pair[1], ref[f"scale_{s}_flip"], atol=1e-5)
    # 53 x 37 at 0.5: round(26.5) = 26, round(18.5) = 18 (half to even)
    assert out[1].shape == (2, 3, 18, 26)


# ---------------------------------------------------------------- CRF


def test_crf_inference_matches_reference():
    ref = np.load(DATA / "crf.npz", allow_pickle=False)
    q = crf_inference(ref["image"], ref["probs"])
    assert q.shape == (3, 40, 50) and q.dtype == np.float32
    np.testing.assert_allclose(q, ref["q"], atol=1e-4)
    # non-contiguous inputs are made contiguous, not misread
    q2 = crf_inference(np.asfortranarray(ref["image"]), np.asfortranarray(ref["probs"]), labels=3)
    np.testing.assert_allclose(q2, q, atol=1e-6)


def test_crf_inference_rejects_bad_inputs():
    img = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="4x5"):
        crf_inference(img, np.full((2, 5, 4), 0.5, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        crf_inference(img.astype(np.float32), np.full((2, 4, 5), 0.5, np.float32))
    with pytest.raises(ValueError, match="labels=3"):
        crf_inference(img, np.full((2, 4, 5), 0.5, np.float32), labels=3)


def test_crf_scores_with_alpha():
    h, w = 20, 30
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ramp = np.tile(np.linspace(0.0, 1.0, w, dtype=np.float32), (h, 1))  # CAM from 0 (left) to 1 (right)
    blob = np.zeros((h, w), np.float32)
    blob[15:, :5] = 0.9  # a second class in the bottom-left corner
    cams = np.stack([ramp, blob])
    keys = np.array([2, 14])

    keys_out, low = crf_scores_with_alpha(img, keys, cams, alpha=4)
    np.testing.assert_array_equal(keys_out, [0, 3, 15])
    assert low.shape == (3, h, w) and low.dtype == np.float32
    np.testing.assert_allclose(low.sum(axis=0), 1.0, atol=1e-5)

    # the probabilities fed to the CRF are [(1 - max_k cam_k) ** alpha, cams...]
    bg = (1.0 - np.maximum(cams[0], cams[1])) ** 4
    np.testing.assert_allclose(low, crf_inference(img, np.concatenate([bg[None], cams])), atol=1e-6)

    _, high = crf_scores_with_alpha(img, keys, cams, alpha=24)
    bg_low, bg_high = (low.argmax(0) == 0).sum(), (high.argmax(0) == 0).sum()
    # unary-only thresholds on the ramp: (1 - c)^4 > c for c < 0.28, (1 - c)^24 > c for c < 0.09
    assert bg_low > bg_high > 0


def test_crf_scores_with_alpha_no_class():
    keys_out, scores = crf_scores_with_alpha(np.zeros((4, 5, 3), np.uint8), [], np.zeros((0, 4, 5)), alpha=4)
    np.testing.assert_array_equal(keys_out, [0])
    np.testing.assert_allclose(scores, 1.0)
