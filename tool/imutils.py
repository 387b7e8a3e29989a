"""Image operations of the datasets and scripts (docs/method.md#ssenet-training, #ssenet-inference, #affinitynet).

Pure functions over numpy arrays and PIL images. Functions that draw random
numbers take an explicit ``np.random.Generator``; nothing here touches a global
RNG, so a caller that seeds its generator gets the same augmentation every time.

Conventions: images are (H, W, 3) RGB, ``uint8`` before :func:`normalize` and
``float32`` after; label and score maps share the image's first two axes
((H, W) or (H, W, C)), so joint crops and flips treat them like the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

#: (H, W, 3) RGB uint8 -> (H, W, 3) float32 network input: a network's ``Net.normalize``.
Normalizer = Callable[[np.ndarray], np.ndarray]


def normalize(img: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> float32 ``(x / 255 - mean) / std`` (per-channel float32 ``mean`` and ``std``).

    Generic; each network carries its own statistics as ``Net.normalize``
    (ResNet38's ImageNet mean / std: ``network.resnet38d.normalize``; VGG16's:
    ``network.vgg16d.normalize``), and the datasets and scripts take it from there.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects an (H, W, 3) RGB image, got shape {img.shape}")
    return (img.astype(np.float32) / 255.0 - mean) / std


def denormalize(img: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize` for display: float32 (H, W, 3) -> uint8, rounded and clipped."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"denormalize expects an (H, W, 3) image, got shape {img.shape}")
    rgb = (img.astype(np.float32) * std + mean) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    """(H, W, C) -> C-contiguous (C, H, W), ready for ``torch.from_numpy``."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def resize_long(img: Image.Image, long_side: int) -> Image.Image:
    """Bicubic resize so the longer side is ``long_side``, keeping the aspect ratio.

    The short side is ``round(short * long_side / long)`` (Python's round, half
    to even), as in the reference ``RandomResizeLong``; a square image counts as
    tall.
    """
    w, h = img.size
    if w > h:
        size = (long_side, round(h * long_side / w))
    else:
        size = (round(w * long_side / h), long_side)
    return img.resize(size, resample=Image.BICUBIC)


def random_resize_long(img: Image.Image, min_long: int, max_long: int, rng: np.random.Generator) -> Image.Image:
    """:func:`resize_long` to a long side drawn uniformly from the integers ``[min_long, max_long]``."""
    return resize_long(img, int(rng.integers(min_long, max_long + 1)))


def random_scale(
    img: Image.Image, label: Image.Image, low: float, high: float, rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    """Resize an image (bicubic) and its label map (nearest) by one factor drawn uniformly from [low, high].

    Both sides become ``round(side * s)`` (at least 1), so the two stay pixel-aligned.
    """
    if img.size != label.size:
        raise ValueError(f"image {img.size} and label {label.size} differ in size")
    s = float(rng.uniform(low, high))
    w, h = img.size
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return img.resize(size, resample=Image.BICUBIC), label.resize(size, resample=Image.NEAREST)


class CropBox(NamedTuple):
    """Where a crop window meets the image: copy ``img[img_top:+h, img_left:+w]`` to
    ``canvas[cont_top:+h, cont_left:+w]`` of a zero ``crop_size`` x ``crop_size`` canvas."""

    cont_top: int
    cont_left: int
    img_top: int
    img_left: int
    h: int
    w: int


def _axis_offsets(space: int, offset: int) -> tuple[int, int]:
    # space = image - crop along one axis. A larger image is cut at ``offset``;
    # a smaller (or equal) one is pasted into the canvas at ``offset``.
    return (0, offset) if space > 0 else (offset, 0)


def random_crop_box(h: int, w: int, crop_size: int, rng: np.random.Generator) -> CropBox:
    """A uniformly random crop window (reference ``RandomCrop``): per axis, the
    offset is drawn from ``range(|image - crop| + 1)``, columns first."""
    w_space, h_space = w - crop_size, h - crop_size
    cont_left, img_left = _axis_offsets(w_space, int(rng.integers(abs(w_space) + 1)))
    cont_top, img_top = _axis_offsets(h_space, int(rng.integers(abs(h_space) + 1)))
    return CropBox(cont_top, cont_left, img_top, img_left, min(crop_size, h), min(crop_size, w))


def center_crop_box(h: int, w: int, crop_size: int) -> CropBox:
    """The centred crop window; the offset is ``round(|image - crop| / 2)`` (half to even),
    as in the reference ``CenterCrop``."""
    w_space, h_space = w - crop_size, h - crop_size
    cont_left, img_left = _axis_offsets(w_space, round(abs(w_space) / 2))
    cont_top, img_top = _axis_offsets(h_space, round(abs(h_space) / 2))
    return CropBox(cont_top, cont_left, img_top, img_left, min(crop_size, h), min(crop_size, w))


def apply_crop(arr: np.ndarray, box: CropBox, crop_size: int, fill: float = 0) -> np.ndarray:
    """Cut ``box`` out of ``arr`` ((H, W) or (H, W, C)) onto a canvas of ``fill`` (default zero), same dtype."""
    canvas = np.full((crop_size, crop_size, *arr.shape[2:]), fill, dtype=arr.dtype)
    canvas[box.cont_top : box.cont_top + box.h, box.cont_left : box.cont_left + box.w] = arr[
        box.img_top : box.img_top + box.h, box.img_left : box.img_left + box.w
    ]
    return canvas


def _check_same_hw(arrays: Sequence[np.ndarray]) -> tuple[int, int]:
    if not arrays:
        raise ValueError("expected at least one array")
    h, w = arrays[0].shape[:2]
    for a in arrays[1:]:
        if a.shape[:2] != (h, w):
            raise ValueError(f"joint transform needs arrays of the same height and width, got {a.shape} vs {(h, w)}")
    return h, w


def random_crop(
    *arrays: np.ndarray, crop_size: int, rng: np.random.Generator, fills: Sequence[float] | None = None
) -> tuple[np.ndarray, ...]:
    """Jointly crop arrays of the same (H, W) to ``crop_size`` x ``crop_size``.

    An axis shorter than the crop is pasted at a random offset into a zero
    canvas; the same window is used for every array, so an image and its label
    or score map stay aligned. Zero means zero in each array's own units: crop a
    normalised image to get zero after normalisation (docs/method.md#ssenet-training), a uint8 image to
    get black (docs/method.md#affinitynet). ``fills`` gives each array its own canvas value instead
    (e.g. ``(0, 255)``: a segmentation label padded with the ignore index).
    """
    h, w = _check_same_hw(arrays)
    fills = (0,) * len(arrays) if fills is None else tuple(fills)
    if len(fills) != len(arrays):
        raise ValueError(f"random_crop got {len(arrays)} arrays but {len(fills)} fill values")
    box = random_crop_box(h, w, crop_size, rng)
    return tuple(apply_crop(a, box, crop_size, f) for a, f in zip(arrays, fills, strict=True))


def center_crop(*arrays: np.ndarray, crop_size: int) -> tuple[np.ndarray, ...]:
    """Jointly take the centred ``crop_size`` window (zero canvas where the image is smaller)."""
    h, w = _check_same_hw(arrays)
    box = center_crop_box(h, w, crop_size)
    return tuple(apply_crop(a, box, crop_size) for a in arrays)


def random_hflip(*arrays: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> tuple[np.ndarray, ...]:
    """Flip all arrays left-right together with probability ``p`` (one draw for all).

    Flipped arrays are contiguous copies; otherwise the inputs come back as they are.
    """
    _check_same_hw(arrays)
    if rng.random() < p:
        return tuple(np.ascontiguousarray(a[:, ::-1]) for a in arrays)
    return arrays


def msf_inputs(img: Image.Image, scales: Sequence[float], normalize: Normalizer) -> list[np.ndarray]:
    """Multi-scale, flipped network inputs for CAM inference (docs/method.md#ssenet-inference).

    For each scale s: PIL bicubic resize to ``(round(W * s), round(H * s))``
    (Python's round, half to even, as the reference), normalise, CHW, and stack
    with its horizontal flip. Returns one float32 (2, 3, h_s, w_s) array per
    scale: the pair goes through the network as one batch.
    """
    w, h = img.size
    out = []
    for s in scales:
        size = (round(w * s), round(h * s))
        if min(size) < 1:
            raise ValueError(f"scale {s} shrinks the {w}x{h} image to {size[0]}x{size[1]}")
        chw = hwc_to_chw(normalize(np.asarray(img.resize(size, resample=Image.BICUBIC))))
        out.append(np.stack([chw, chw[:, :, ::-1]]))
    return out


def pool_scores(scores: np.ndarray, block: int = 8) -> np.ndarray:
    """Average-pool an (H, W, C) map over ``block`` x ``block`` cells -> (ceil(H/b), ceil(W/b), C).

    When H or W is not a multiple of ``block`` the map is zero-padded at the
    bottom/right first and the zeros count in the mean (the reference's
    ``block_reduce`` behaviour). This matches the network, whose stride-8 output
    of an n-pixel side has ceil(n / 8) cells.
    """
    if scores.ndim != 3:
        raise ValueError(f"pool_scores expects an (H, W, C) map, got shape {scores.shape}")
    h, w, c = scores.shape
    gh, gw = -(-h // block), -(-w // block)
    padded = np.zeros((gh * block, gw * block, c), dtype=np.float32)
    padded[:h, :w] = scores
    return padded.reshape(gh, block, gw, block, c).mean(axis=(1, 3), dtype=np.float32)


def __getattr__(name: str):
    # ``from tool.imutils import crf_inference`` is where the published code kept the dense CRF; its home is
    # tool.crf. Imported on first use so that importing the image ops does not load pydensecrf.
    if name == "crf_inference":
        from tool.crf import crf_inference

        return crf_inference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
