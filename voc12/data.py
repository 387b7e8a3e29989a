"""The datasets of the learning stages (docs/method.md#ssenet-training, #ssenet-inference, #affinitynet).

Each reads its images through a dataset descriptor (:class:`tool.dataset.DatasetInfo`: VOC, COCO, a folder), or,
as before datasets were a parameter, a VOC devkit folder; the class names keep the published ``VOC12`` prefix.

- :class:`VOC12ClsDataset` with :class:`TrainClsTransform` / :class:`ValClsTransform`:
  SSENet classification training and validation (docs/method.md#ssenet-training).
- :class:`VOC12ClsDatasetMSF`: multi-scale, flipped inputs for CAM inference (docs/method.md#ssenet-inference).
- :class:`VOC12ImageDatasetMSF`: the same inputs without labels (segmentation inference).
- :class:`VOC12SegDataset`: segmentation training on pseudo-label PNGs (docs/method.md#segmentation).
- :class:`VOC12AffDataset`: AffinityNet training images with pair labels derived
  from the low/high-alpha CRF score files (docs/method.md#affinity-labels); :func:`label_from_crf_scores`
  and :func:`affinity_labels` are the two steps of that derivation.

Randomness: every augmentation draws from torch's global generator, directly
(torchvision's ``ColorJitter``) or through a numpy ``Generator`` seeded from it
once per item (:func:`item_rng`). DataLoader seeds torch in each worker with
``base_seed + worker_id`` (``base_seed`` comes from the loader's ``generator``),
and ``seed_everything`` seeds it in the main process, so one seed fixes every
crop, flip and jitter without relying on a ``worker_init_fn``. The reference's
exact random stream (Python ``random`` plus numpy seeded with 1 + worker id) is
not reproduced; only its distributions are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import ColorJitter

from tool import imutils, layout
from tool.cli import InputError, MissingFileError
from tool.dataset import DatasetInfo, load_img_id_list
from tool.fileio import load_label_png, load_scores, missing_score_file_message, score_file
from tool.metrics import IGNORE_INDEX
from tool.randomwalk import DEFAULT_RADIUS, from_region, pair_slices
from voc12.dataset import VOC12

# Colour jitter of docs/method.md#ssenet-training and #affinitynet (torchvision ColorJitter on the PIL image).
COLOR_JITTER = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.1}
MSF_SCALES = (1.0, 0.5, 1.5, 2.0)
# A pooled cell whose CRF scores are all below this lies in the crop's zero padding.
NO_SCORE_EPS = 1e-5


def as_dataset(dataset: DatasetInfo | str | os.PathLike) -> DatasetInfo:
    """``dataset`` itself, or the VOC descriptor of a devkit folder (the published signature's ``voc12_root``)."""
    return dataset if isinstance(dataset, DatasetInfo) else VOC12(dataset)


def item_rng() -> np.random.Generator:
    """A numpy generator for one item's augmentation, seeded from torch's global RNG."""
    return np.random.default_rng(int(torch.randint(2**62, (1,)).item()))


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 3-channel 8-bit RGB (VOC has a few CMYK/grey JPEGs).

    Images of more than 8 bits per channel are refused: Pillow's RGB conversion
    clips them (a 16-bit image turns all white). A truncated or unreadable file
    raises :class:`InputError` naming it.
    """
    try:
        with Image.open(path) as img:
            if img.mode in ("I", "F") or img.mode.startswith(("I;", "BGR;")):
                raise InputError(
                    f"{path}: {img.mode} image ({'float' if img.mode == 'F' else 'more than 8 bits per channel'}); "
                    "expected an 8-bit RGB or grey JPEG: convert it to 8 bits first"
                )
            return img.convert("RGB")
    except OSError as e:  # truncated JPEG, unknown format (UnidentifiedImageError), unreadable file
        raise InputError(f"{path}: cannot read the image, truncated or not an image? ({e})") from None


def _require_files(paths: Mapping[str, Path], what: str, list_path: str | os.PathLike) -> None:
    """Fail at construction, not hours into training, if any file of the list is missing."""
    missing = [(image_id, p) for image_id, p in paths.items() if not p.is_file()]
    if missing:
        image_id, p = missing[0]
        raise FileNotFoundError(
            f"{len(missing)} {what} file(s) missing for images of {list_path}; first: id {image_id} -> {p}"
        )


def _label_matrix(
    ids: Sequence[str], labels: Mapping[str, np.ndarray], list_path: str | os.PathLike, num_fg_classes: int
) -> np.ndarray:
    """Stack the image-level labels of ``ids`` into an (N, num_fg_classes) float32 matrix, checking each."""
    missing = [i for i in ids if i not in labels]
    if missing:
        raise KeyError(f"{len(missing)} image(s) of {list_path} have no class label; first: {missing[0]}")
    rows = [np.asarray(labels[i], dtype=np.float32) for i in ids]
    for image_id, row in zip(ids, rows, strict=True):
        if row.shape != (num_fg_classes,):
            raise ValueError(f"class label of {image_id} has shape {row.shape}, expected ({num_fg_classes},)")
    return np.stack(rows)


class TrainClsTransform:
    """Training augmentation (docs/method.md#ssenet-training): PIL RGB image -> (3, crop, crop) float32 tensor.

    Resize so the long side is a random integer in ``resize_long`` (bicubic),
    colour jitter, normalise, horizontal flip (p = 0.5), random crop with a zero
    canvas after normalisation, CHW. The reference flips before the jitter; the
    jitter is flip-invariant (per-pixel maps plus a global mean), so flipping
    the array afterwards gives the same distribution.
    """

    def __init__(
        self, resize_long: tuple[int, int] = (448, 768), crop_size: int = 448, *, normalize: imutils.Normalizer
    ) -> None:
        self.resize_long = resize_long
        self.crop_size = crop_size
        self.normalize = normalize
        self.color_jitter = ColorJitter(**COLOR_JITTER)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        rng = item_rng()
        img = imutils.random_resize_long(img, *self.resize_long, rng)
        arr = self.normalize(np.asarray(self.color_jitter(img)))
        (arr,) = imutils.random_hflip(arr, rng=rng)
        (arr,) = imutils.random_crop(arr, crop_size=self.crop_size, rng=rng)
        return torch.from_numpy(imutils.hwc_to_chw(arr))


class ValClsTransform:
    """Validation input (docs/method.md#ssenet-training): normalise, zero-canvas centre crop, CHW, float32."""

    def __init__(self, crop_size: int = 500, *, normalize: imutils.Normalizer) -> None:
        self.crop_size = crop_size
        self.normalize = normalize

    def __call__(self, img: Image.Image) -> torch.Tensor:
        (arr,) = imutils.center_crop(self.normalize(np.asarray(img)), crop_size=self.crop_size)
        return torch.from_numpy(imutils.hwc_to_chw(arr))


class VOC12ClsDataset(Dataset):
    """Images of a list with their image-level labels: items are ``(id, img, label)``.

    ``labels`` maps each id to its C-d multi-hot vector (C = the dataset's foreground classes). ``img`` is
    ``transform(PIL RGB image)``, or the PIL image itself without a transform;
    ``label`` is a (C,) float32 tensor.
    """

    def __init__(
        self,
        list_path: str | os.PathLike,
        dataset: DatasetInfo | str | os.PathLike,
        labels: Mapping[str, np.ndarray],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.ids = load_img_id_list(list_path, duplicates="drop")
        self.dataset = as_dataset(dataset)
        self.labels = _label_matrix(self.ids, labels, list_path, self.dataset.num_fg_classes)
        self.transform = transform
        _require_files({i: self.dataset.image_path(i) for i in self.ids}, "JPEG image", list_path)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[str, Any, torch.Tensor]:
        image_id = self.ids[index]
        img = load_rgb(self.dataset.image_path(image_id))
        if self.transform is not None:
            img = self.transform(img)
        return image_id, img, torch.from_numpy(self.labels[index].copy())


class VOC12ImageDatasetMSF(Dataset):
    """Multi-scale inference inputs of a list's images (docs/method.md#ssenet-inference; segmentation inference).
    Items are dicts:

    - ``"id"``: the image id;
    - ``"image"``: the original RGB image, (H, W, 3) uint8 tensor (for the CRF);
    - ``"inputs"``: per scale, a (2, 3, h_s, w_s) float32 tensor, the normalised
      scaled image and its horizontal flip (see :func:`tool.imutils.msf_inputs`).
    """

    def __init__(
        self,
        list_path: str | os.PathLike,
        dataset: DatasetInfo | str | os.PathLike,
        scales: Sequence[float] = MSF_SCALES,
        *,
        normalize: imutils.Normalizer,
    ) -> None:
        self.ids = load_img_id_list(list_path, duplicates="drop")
        self.dataset = as_dataset(dataset)
        self.scales = tuple(scales)
        self.normalize = normalize
        _require_files({i: self.dataset.image_path(i) for i in self.ids}, "JPEG image", list_path)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        img = load_rgb(self.dataset.image_path(image_id))
        return {
            "id": image_id,
            "image": torch.from_numpy(np.array(img)),
            "inputs": [torch.from_numpy(x) for x in imutils.msf_inputs(img, self.scales, self.normalize)],
        }


class VOC12ClsDatasetMSF(VOC12ImageDatasetMSF):
    """:class:`VOC12ImageDatasetMSF` items plus ``"label"``, the (C,) float32 image-level label
    (docs/method.md#ssenet-inference)."""

    def __init__(
        self,
        list_path: str | os.PathLike,
        dataset: DatasetInfo | str | os.PathLike,
        labels: Mapping[str, np.ndarray],
        scales: Sequence[float] = MSF_SCALES,
        *,
        normalize: imutils.Normalizer,
    ) -> None:
        # Labels are checked before the files, as in VOC12ClsDataset.
        ids = load_img_id_list(list_path, duplicates="drop")
        self.labels = _label_matrix(ids, labels, list_path, as_dataset(dataset).num_fg_classes)
        super().__init__(list_path, dataset, scales, normalize=normalize)

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["label"] = torch.from_numpy(self.labels[index].copy())
        return item


def label_from_crf_scores(la_scores: np.ndarray, ha_scores: np.ndarray) -> np.ndarray:
    """Per-cell training label from pooled low/high-alpha CRF scores, each (h, w, K) (docs/method.md#affinity-labels).

    Channel 0 is background (key 0). Start from the low-alpha argmax, whose
    foreground is confident; its background is unsure (255) unless the
    high-alpha argmax, whose background is confident, says background (0).
    Cells with no score at all (crop padding) are 255. The result holds
    indices into the keys, which is all the pair labels need (equality).
    """
    label = la_scores.argmax(axis=-1).astype(np.uint8)
    label[label == 0] = IGNORE_INDEX
    label[ha_scores.argmax(axis=-1) == 0] = 0
    no_score = np.maximum(la_scores.max(axis=-1), ha_scores.max(axis=-1)) < NO_SCORE_EPS
    label[no_score] = IGNORE_INDEX
    return label


def affinity_labels(label: np.ndarray, radius: int = DEFAULT_RADIUS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair labels of an (h, w) label map (255 = ignore) on the feature grid (docs/method.md#affinity-labels).

    Pairs follow :mod:`tool.randomwalk` (offset k, from-pixel i). Returns
    ``(bg_pos, fg_pos, neg)``, each (n_offsets, n_from) float32 in {0, 1}: a pair
    whose ends are both labelled is positive when the labels agree (background
    when they are 0, foreground otherwise) and negative when they differ.
    """
    if label.ndim != 2:
        raise ValueError(f"affinity_labels expects an (h, w) label map, got shape {label.shape}")
    h, w = label.shape
    label_from = label[from_region(h, w, radius)]  # (h_from, w_from)
    label_to = np.stack([label[s] for s in pair_slices(h, w, radius)])  # (n_offsets, h_from, w_from)
    valid = (label_from != IGNORE_INDEX) & (label_to != IGNORE_INDEX)
    equal = label_to == label_from
    bg_pos = equal & (label_from == 0)
    fg_pos = equal & (label_from != 0) & valid
    neg = ~equal & valid
    n = label_to.shape[0]
    return tuple(x.reshape(n, -1).astype(np.float32) for x in (bg_pos, fg_pos, neg))


class VOC12AffDataset(Dataset):
    """AffinityNet training data (docs/method.md#affinitynet): items are ``(img, bg_pos, fg_pos, neg)``.

    ``img`` is the augmented, normalised (3, crop, crop) float32 image and the
    pair labels are (n_offsets, n_from) float32 on the ceil(crop / stride) grid of
    the network (``stride``, its ``Net.stride``: 34 x 2496 for crop 448, radius 5,
    stride 8). Labels come from the CRF score files of ``infer_cls_ser.py`` (keys 0 = background, k + 1 = class k) in
    ``la_crf_dir`` (low alpha) and ``ha_crf_dir`` (high alpha); with
    ``allow_pickle`` the reference's pickled ``.npy`` files are read too.

    Augmentation: colour jitter, joint random crop of the uint8 image and the
    stacked scores (zero padding, so the padded image is black before
    normalisation and the padded scores mark "no label"), normalise, joint
    horizontal flip, stride x stride average pooling of the scores.
    """

    def __init__(
        self,
        list_path: str | os.PathLike,
        dataset: DatasetInfo | str | os.PathLike,
        la_crf_dir: str | os.PathLike,
        ha_crf_dir: str | os.PathLike,
        crop_size: int = 448,
        radius: int = DEFAULT_RADIUS,
        allow_pickle: bool = False,
        *,
        normalize: imutils.Normalizer,
        stride: int = 8,
    ) -> None:
        self.ids = load_img_id_list(list_path, duplicates="drop")
        self.dataset = as_dataset(dataset)
        self.normalize = normalize
        self.stride = stride
        self.la_crf_dir, self.ha_crf_dir = Path(la_crf_dir), Path(ha_crf_dir)
        self.crop_size = crop_size
        self.radius = radius
        self.allow_pickle = allow_pickle
        self.color_jitter = ColorJitter(**COLOR_JITTER)
        grid = -(-crop_size // stride)
        from_region(grid, grid, radius)  # raises early if the crop is too small for the pair radius
        _require_files({i: self.dataset.image_path(i) for i in self.ids}, "JPEG image", list_path)
        for crf_dir in (self.la_crf_dir, self.ha_crf_dir):
            paths = {i: score_file(crf_dir, i, allow_pickle) for i in self.ids}
            missing = [p for p in paths.values() if not p.is_file()]
            if missing:
                first = missing_score_file_message(missing[0])
                raise MissingFileError(f"{len(missing)} CRF score file(s) of {list_path} missing; first: {first}")

    def __len__(self) -> int:
        return len(self.ids)

    def _load_crf_scores(self, image_id: str, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        la_path = score_file(self.la_crf_dir, image_id, self.allow_pickle)
        ha_path = score_file(self.ha_crf_dir, image_id, self.allow_pickle)
        num_fg = self.dataset.num_fg_classes
        la_keys, la_scores = load_scores(la_path, self.allow_pickle, kind="crf", num_fg_classes=num_fg)
        ha_keys, ha_scores = load_scores(ha_path, self.allow_pickle, kind="crf", num_fg_classes=num_fg)
        if not np.array_equal(la_keys, ha_keys):
            raise InputError(f"CRF score files disagree on keys: {la_path} has {la_keys}, {ha_path} has {ha_keys}")
        if la_keys.size == 0 or la_keys[0] != 0:
            raise InputError(f"{la_path}: CRF keys {la_keys} must start with 0 (background)")
        for path, scores in ((la_path, la_scores), (ha_path, ha_scores)):
            if scores.shape[1:] != hw:
                raise InputError(f"{path}: scores are {scores.shape[1:]} but image {image_id} is {hw}")
        return la_scores, ha_scores

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        image_id = self.ids[index]
        img = load_rgb(self.dataset.image_path(image_id))
        la_scores, ha_scores = self._load_crf_scores(image_id, (img.height, img.width))
        n_keys = la_scores.shape[0]
        scores = np.concatenate([la_scores, ha_scores]).transpose(1, 2, 0)  # (H, W, 2K)

        rng = item_rng()
        img_arr = np.asarray(self.color_jitter(img))
        img_arr, scores = imutils.random_crop(img_arr, scores, crop_size=self.crop_size, rng=rng)
        img_arr, scores = imutils.random_hflip(self.normalize(img_arr), scores, rng=rng)
        pooled = imutils.pool_scores(scores, self.stride)  # (grid, grid, 2K)

        label = label_from_crf_scores(pooled[..., :n_keys], pooled[..., n_keys:])
        bg_pos, fg_pos, neg = affinity_labels(label, self.radius)
        return (
            torch.from_numpy(imutils.hwc_to_chw(img_arr)),
            torch.from_numpy(bg_pos),
            torch.from_numpy(fg_pos),
            torch.from_numpy(neg),
        )


class VOC12ImageDataset(Dataset):
    """Plain images of a list (or of ``ids``): items are ``(id, (H, W, 3) uint8 tensor)``."""

    def __init__(
        self, list_path: str | os.PathLike, dataset: DatasetInfo | str | os.PathLike, ids: Sequence[str] | None = None
    ):
        self.ids = list(ids) if ids is not None else load_img_id_list(list_path, duplicates="drop")
        self.dataset = as_dataset(dataset)
        _require_files({i: self.dataset.image_path(i) for i in self.ids}, "JPEG image", list_path)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        return image_id, torch.from_numpy(np.array(load_rgb(self.dataset.image_path(image_id))))


class VOC12SegDataset(Dataset):
    """Segmentation training data (docs/method.md#segmentation): items are ``(img, label)``.

    ``label_dir/<id>.png`` is a class-index PNG (palette or grey; 0 background,
    1..C classes, 255 ignored), e.g. the random-walk output of ``infer_aff.py``
    or ``SegmentationClass`` itself. ``img`` is the (3, crop, crop) float32
    image normalised by ``normalize`` (the network's ``Net.normalize``), ``label`` the (crop, crop) int64 label.

    Augmentation: joint random rescale by s ~ U(``scale_range``) (image bicubic,
    label nearest), optional colour jitter, normalise, joint horizontal flip,
    joint random crop; the image is padded with 0 (after normalisation) and the
    label with 255, so padding never counts in the loss.
    """

    def __init__(
        self,
        list_path: str | os.PathLike,
        dataset: DatasetInfo | str | os.PathLike,
        label_dir: str | os.PathLike,
        crop_size: int = 448,
        scale_range: tuple[float, float] = (0.5, 1.5),
        color_jitter: bool = True,
        *,
        normalize: imutils.Normalizer,
    ) -> None:
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {scale_range}")
        self.ids = load_img_id_list(list_path)  # duplicates are an error: an image would weigh twice
        self.dataset = as_dataset(dataset)
        self.label_dir = Path(label_dir)
        if not self.label_dir.is_dir():
            raise MissingFileError(f"label folder not found: {self.label_dir}")
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.color_jitter = ColorJitter(**COLOR_JITTER) if color_jitter else None
        self.normalize = normalize
        _require_files({i: self.dataset.image_path(i) for i in self.ids}, "JPEG image", list_path)
        labels = {i: layout.label_png(self.label_dir, i) for i in self.ids}
        _require_files(labels, f"label PNG (in {label_dir})", list_path)

    def __len__(self) -> int:
        return len(self.ids)

    def load_label(self, image_id: str, size: tuple[int, int]) -> Image.Image:
        """The label of ``image_id`` as a PIL "L" image, checked against the image ``size`` (W, H) and the classes."""
        path = layout.label_png(self.label_dir, image_id)
        try:
            label = load_label_png(path)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read label PNG: {e}") from None
        if label.shape != (size[1], size[0]):
            raise InputError(
                f"{path}: label is {label.shape[1]}x{label.shape[0]} but image {image_id} is {size[0]}x{size[1]}"
            )
        num_classes = self.dataset.num_classes
        bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
        if bad.size:
            raise InputError(
                f"{path}: label values {bad.tolist()[:10]} outside 0..{num_classes - 1} and {IGNORE_INDEX} "
                f"({self.dataset.name} has {num_classes} classes with background)"
            )
        return Image.fromarray(label.astype(np.uint8), mode="L")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.ids[index]
        img = load_rgb(self.dataset.image_path(image_id))
        label = self.load_label(image_id, img.size)
        rng = item_rng()
        img, label = imutils.random_scale(img, label, *self.scale_range, rng)
        if self.color_jitter is not None:
            img = self.color_jitter(img)
        img_arr = self.normalize(np.asarray(img))
        img_arr, label_arr = imutils.random_hflip(img_arr, np.asarray(label), rng=rng)
        img_arr, label_arr = imutils.random_crop(
            img_arr, label_arr, crop_size=self.crop_size, rng=rng, fills=(0, IGNORE_INDEX)
        )
        return torch.from_numpy(imutils.hwc_to_chw(img_arr)), torch.from_numpy(label_arr.astype(np.int64))
