"""Dense CRF refinement of class scores (docs/method.md#crf).

Krähenbühl & Koltun's fully connected CRF through pydensecrf (PyPI package
``pydensecrf2``), with the reference's parameters: unary ``-log(clip(p, 1e-5, 1))``,
a Gaussian smoothness kernel (sxy 3, compat 3), a bilateral appearance kernel
(sxy 80, srgb 13, compat 10) and 10 mean-field iterations.

:func:`crf_scores_with_alpha` builds the low/high-alpha CRF scores that
``infer_cls_ser.py`` stores and AffinityNet learns from (docs/method.md#ssenet-inference, #affinitynet).
pydensecrf is imported on first use only.
"""

from __future__ import annotations

import numpy as np

UNARY_CLIP = 1e-5
GAUSSIAN_SXY, GAUSSIAN_COMPAT = 3.0, 3
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_COMPAT = 80.0, 13.0, 10


def crf_inference(
    img: np.ndarray, probs: np.ndarray, t: int = 10, scale_factor: float = 1.0, labels: int | None = None
) -> np.ndarray:
    """Refine ``probs`` (C, H, W) on the RGB image ``img`` (H, W, 3) uint8; returns Q, (C, H, W) float32.

    ``t`` is the number of mean-field iterations; ``scale_factor`` divides both
    spatial standard deviations (for images downscaled relative to the
    reference's setting). ``labels`` is accepted for the reference's signature
    and must equal C when given.
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"crf_inference expects an (H, W, 3) uint8 RGB image, got {img.dtype} {img.shape}")
    n_labels, h, w = probs.shape
    if (h, w) != img.shape[:2]:
        raise ValueError(f"probs are {h}x{w} but the image is {img.shape[0]}x{img.shape[1]}")
    if labels is not None and labels != n_labels:
        raise ValueError(f"labels={labels} but probs has {n_labels} channels")

    # Imported here: CRF-free runs (infer_cls_ser.py without --out_crf) work where pydensecrf is not installed.
    import pydensecrf.densecrf as dcrf

    # pydensecrf reads raw buffers: it needs C-contiguous float32 unaries and uint8 pixels.
    unary = -np.log(np.clip(probs.reshape(n_labels, -1), UNARY_CLIP, 1.0))
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY / scale_factor, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(
        sxy=BILATERAL_SXY / scale_factor,
        srgb=BILATERAL_SRGB,
        rgbim=np.require(img, np.uint8, ["C", "W"]),
        compat=BILATERAL_COMPAT,
    )
    q = crf.inference(t)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


def crf_scores_with_alpha(
    img: np.ndarray, keys: np.ndarray, cams: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """CRF scores of background + present classes for one background power ``alpha`` (docs/method.md#ssenet-inference).

    ``keys`` (K,) are the 0-based indices of the present classes and ``cams``
    (K, H, W) their normalised CAMs in [0, 1]. The background score is
    ``(1 - max_k cam_k) ** alpha``: a low alpha keeps it large (only confident
    foreground survives), a high alpha shrinks it (only confident background).
    Returns ``(keys_out, scores)``: ``keys_out`` = [0, k + 1 ...] (mask labels,
    0 = background) as int64 and ``scores`` (K + 1, H, W) float32 CRF marginals.
    An image with no present class gets background probability 1 everywhere.
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != keys.size:
        raise ValueError(f"cams must be (K, H, W) with K = len(keys) = {keys.size}, got {cams.shape}")
    # initial=0 makes the max of an empty stack 0, i.e. background 1; CAMs are >= 0 so it changes nothing else.
    bg = (1.0 - cams.max(axis=0, initial=0.0)) ** alpha
    probs = np.concatenate([bg[None], cams], axis=0)
    scores = crf_inference(img, probs)
    return np.concatenate([[0], keys + 1]), scores
