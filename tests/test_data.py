"""voc12/data.py: affinity labels, datasets (docs/method.md#ssenet-training, #ssenet-inference, #affinitynet)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from network.resnet38d import normalize
from tool import imutils
from tool.fileio import save_scores
from tool.randomwalk import pair_indices
from voc12.data import (
    TrainClsTransform,
    ValClsTransform,
    VOC12AffDataset,
    VOC12ClsDataset,
    VOC12ClsDatasetMSF,
    affinity_labels,
    label_from_crf_scores,
)
from voc12.dataset import VOC12

DATA = Path(__file__).parent / "data"

# ---------------------------------------------------------------- affinity labels


def test_affinity_labels_match_reference():
    ref = np.load(DATA / "affinity_labels.npz", allow_pickle=False)
    out = affinity_labels(ref["label"])
    for name, arr in zip(("bg_pos", "fg_pos", "neg"), out, strict=True):
        assert arr.dtype == np.float32 and arr.shape == (34, 320)
        np.testing.assert_array_equal(arr, ref[name], err_msg=name)


def test_affinity_labels_hand_counts():
    # 12 x 12 grid: columns 0..5 background (0), columns 6..11 class 3; row 11 and cell (0, 4) ignored (255).
    label = np.zeros((12, 12), np.uint8)
    label[:, 6:] = 3
    label[11] = 255
    label[0, 4] = 255
    bg_pos, fg_pos, neg = affinity_labels(label)
    # From pixels: rows 0..7 x columns 4..7 = 32, times 34 offsets = 1088 pairs.
    assert bg_pos.shape == (34, 32)
    # Offsets per dx: n(-4..4) = 2, 3, 4, 4, 4, 5, 5, 4, 3 (sum 34).
    # Per from column (all rows, no 255): the partner column c + dx is background iff c + dx <= 5.
    #   c = 4: bg dx <= 1 -> 22, neg 12;  c = 5: bg dx <= 0 -> 17, neg 17;
    #   c = 6: fg dx >= 0 -> 21, neg 13;  c = 7: fg dx >= -1 -> 25, neg 9.
    # Times 8 rows: bg (22 + 17) * 8 = 312, fg (21 + 25) * 8 = 368, neg (12 + 17 + 13 + 9) * 8 = 408.
    # Row 11 = 255 hits from row 7 with dy = 4 (dx = -2..2), 20 pairs:
    #   c = 4 -> cols 2..6: 4 bg, 1 neg;  c = 5 -> cols 3..7: 3 bg, 2 neg;
    #   c = 6 -> cols 4..8: 2 neg, 3 fg;  c = 7 -> cols 5..9: 1 neg, 4 fg.   => bg -7, fg -7, neg -6.
    # Cell (0, 4) = 255 is a from pixel (c = 4, row 0: 22 bg, 12 neg) and no pair ends there.
    # => bg 312 - 7 - 22 = 283, fg 368 - 7 = 361, neg 408 - 6 - 12 = 390, ignored 20 + 34 = 54.
    assert bg_pos.sum() == 283
    assert fg_pos.sum() == 361
    assert neg.sum() == 390
    assert (bg_pos + fg_pos + neg).max() == 1  # each pair has at most one label
    assert 1088 - (bg_pos + fg_pos + neg).sum() == 54


def test_affinity_labels_match_pair_loop():
    # Plain per-pair definition from docs/method.md#affinity-labels over tool.randomwalk's flat pair indices.
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 2, 7, 255], np.uint8), size=(13, 16), p=[0.4, 0.25, 0.25, 0.1])
    idx_from, idx_to = pair_indices(13, 16)
    flat = label.reshape(-1)
    bg_pos, fg_pos, neg = affinity_labels(label)
    for k in range(idx_to.shape[0]):
        for i in range(idx_from.size):
            a, b = flat[idx_from[i]], flat[idx_to[k, i]]
            valid = a != 255 and b != 255
            assert bg_pos[k, i] == (valid and a == b == 0)
            assert fg_pos[k, i] == (valid and a == b != 0)
            assert neg[k, i] == (valid and a != b)


def test_label_from_crf_scores():
    # five cells, keys (bg, one class); low-alpha and high-alpha scores
    la = np.array([[[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.2, 0.8], [0.0, 0.0]]], np.float32)
    ha = np.array([[[0.2, 0.8], [0.7, 0.3], [0.1, 0.9], [0.6, 0.4], [0.0, 0.0]]], np.float32)
    # la says bg -> unsure unless ha says bg; la fg kept unless ha says bg; no score -> 255
    np.testing.assert_array_equal(label_from_crf_scores(la, ha), [[255, 0, 1, 0, 255]])


# ---------------------------------------------------------------- fake VOC tree

IMAGE_SIZES = {"2007_000001": (40, 56), "2007_000002": (120, 100), "2007_000003": (64, 130)}  # (h, w)
CRF_KEYS = np.array([0, 4, 16])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0))
    return e / e.sum(axis=0)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir()
    labels = {}
    for i, (image_id, (h, w)) in enumerate(IMAGE_SIZES.items()):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        labels[image_id] = np.zeros(20, np.float32)
        labels[image_id][[3, 15][: i + 1]] = 1
        logits = rng.normal(size=(3, h, w)) * 3
        save_scores(root / "la" / f"{image_id}.npz", CRF_KEYS, _softmax(logits), kind="crf")
        save_scores(
            root / "ha" / f"{image_id}.npz", CRF_KEYS, _softmax(logits + rng.normal(size=(3, h, w))), kind="crf"
        )
    # constant scores: every cell is class index 1 in both folders
    const = np.zeros((3, 120, 100), np.float32)
    const[1] = 0.9
    const[0] = 0.1
    save_scores(root / "const_la" / "2007_000002.npz", CRF_KEYS, const, kind="crf")
    save_scores(root / "const_ha" / "2007_000002.npz", CRF_KEYS, const, kind="crf")
    # list lines in both accepted forms
    (root / "train.txt").write_text(
        "2007_000001\n/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n2007_000003\n"
    )
    (root / "one.txt").write_text("2007_000002\n")
    return root, labels


def _items_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_cls_dataset_train_transform(voc):
    root, labels = voc
    ds = VOC12ClsDataset(
        root / "train.txt",
        VOC12(root),
        labels,
        transform=TrainClsTransform((48, 64), crop_size=72, normalize=normalize),
    )
    assert len(ds) == 3 and ds.ids[1] == "2007_000002"
    image_id, img, label = ds[1]
    assert image_id == "2007_000002"
    assert img.shape == (3, 72, 72) and img.dtype == torch.float32
    assert label.dtype == torch.float32 and label.shape == (20,) and label[[3, 15]].tolist() == [1, 1]
    # long side <= 64 < crop 72: at least 72^2 - 64^2 canvas pixels are exactly zero after normalisation
    assert (img == 0).all(dim=0).sum() >= 72 * 72 - 64 * 64

    torch.manual_seed(0)
    first = ds[0][1]
    torch.manual_seed(0)
    assert torch.equal(ds[0][1], first)
    assert not torch.equal(ds[0][1], first)  # the RNG moved on


def test_cls_dataset_without_transform_returns_pil(voc):
    root, labels = voc
    _, img, _ = VOC12ClsDataset(root / "train.txt", VOC12(root), labels)[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (56, 40)


def test_loader_is_deterministic_with_workers(voc):
    root, labels = voc
    ds = VOC12ClsDataset(
        root / "train.txt",
        VOC12(root),
        labels,
        transform=TrainClsTransform((48, 64), crop_size=48, normalize=normalize),
    )
    pickle.dumps(ds)  # workers under spawn need a picklable dataset

    def run(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=2, generator=gen)
        return [batch[1] for batch in loader]

    a = run(1)
    assert _items_equal(run(1), a)
    assert not _items_equal(run(2), a)


def test_val_transform_centres_image(voc):
    root, labels = voc
    ds = VOC12ClsDataset(
        root / "train.txt", VOC12(root), labels, transform=ValClsTransform(crop_size=64, normalize=normalize)
    )
    _, img, _ = ds[0]  # 40 x 56 image in a 64 x 64 canvas at top 12, left 4
    assert img.shape == (3, 64, 64)
    with Image.open(root / "JPEGImages" / "2007_000001.jpg") as pil:
        expected = imutils.hwc_to_chw(normalize(np.asarray(pil.convert("RGB"))))
    np.testing.assert_array_equal(img[:, 12:52, 4:60].numpy(), expected)
    assert img.abs().sum() == pytest.approx(np.abs(expected).sum(), rel=1e-6)


def test_msf_dataset(voc):
    root, labels = voc
    ds = VOC12ClsDatasetMSF(root / "train.txt", VOC12(root), labels, scales=(1.0, 0.5, 1.5), normalize=normalize)
    item = ds[2]  # 64 x 130
    assert item["id"] == "2007_000003"
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (64, 130, 3)
    with Image.open(root / "JPEGImages" / "2007_000003.jpg") as pil:
        np.testing.assert_array_equal(item["image"].numpy(), np.asarray(pil.convert("RGB")))
    assert [tuple(x.shape) for x in item["inputs"]] == [(2, 3, 64, 130), (2, 3, 32, 65), (2, 3, 96, 195)]
    for x in item["inputs"]:
        assert x.dtype == torch.float32
        assert torch.equal(x[1], x[0].flip(-1))
    assert item["label"].shape == (20,)


def test_aff_dataset_shapes_and_determinism(voc):
    root, _ = voc
    ds = VOC12AffDataset(root / "train.txt", VOC12(root), root / "la", root / "ha", crop_size=96, normalize=normalize)
    torch.manual_seed(0)
    item = ds[0]
    img, bg_pos, fg_pos, neg = item
    assert img.shape == (3, 96, 96) and img.dtype == torch.float32
    # grid 12 x 12, from pixels 8 x 4 = 32
    for t in (bg_pos, fg_pos, neg):
        assert t.shape == (34, 32) and t.dtype == torch.float32
    assert (bg_pos + fg_pos + neg).max() <= 1
    # a 40 x 56 image in a 96 x 96 crop: the padding cells are ignored
    assert (bg_pos + fg_pos + neg).sum() < 34 * 32
    torch.manual_seed(0)
    assert _items_equal(ds[0], item)

    big = ds[1]  # 120 x 100 > crop: no padding, random scores give every kind of pair
    assert all(t.sum() > 0 for t in big[1:])


def test_aff_dataset_constant_scores_give_foreground_pairs(voc):
    root, _ = voc
    ds = VOC12AffDataset(
        root / "one.txt", VOC12(root), root / "const_la", root / "const_ha", crop_size=96, normalize=normalize
    )
    _, bg_pos, fg_pos, neg = ds[0]
    # every cell is class index 1 in both stacks and the crop has no padding
    assert fg_pos.sum() == 34 * 32 and bg_pos.sum() == 0 and neg.sum() == 0


def test_missing_files_are_named(voc, tmp_path):
    root, labels = voc
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("2007_000001\n2007_999999\n")
    with pytest.raises(FileNotFoundError, match=r"2007_999999.*JPEGImages"):
        VOC12ClsDataset(bad_list, VOC12(root), {**labels, "2007_999999": np.zeros(20)})
    with pytest.raises(KeyError, match="2007_999999"):
        VOC12ClsDatasetMSF(bad_list, VOC12(root), labels, normalize=normalize)

    empty_crf = tmp_path / "empty_crf"
    empty_crf.mkdir()
    with pytest.raises(FileNotFoundError, match=r"CRF score.*empty_crf.*2007_000001"):
        VOC12AffDataset(root / "train.txt", VOC12(root), root / "la", empty_crf, crop_size=96, normalize=normalize)


def test_aff_dataset_crf_mismatch(voc, tmp_path):
    root, _ = voc
    h, w = IMAGE_SIZES["2007_000002"]
    save_scores(tmp_path / "ha" / "2007_000002.npz", [0, 4], np.full((2, h, w), 0.5, np.float32), kind="crf")
    save_scores(tmp_path / "small" / "2007_000002.npz", CRF_KEYS, np.full((3, h - 1, w), 0.3, np.float32), kind="crf")
    ds = VOC12AffDataset(root / "one.txt", VOC12(root), root / "la", tmp_path / "ha", crop_size=96, normalize=normalize)
    with pytest.raises(ValueError, match=r"disagree on keys.*la/2007_000002.npz.*ha/2007_000002.npz"):
        ds[0]
    ds = VOC12AffDataset(
        root / "one.txt", VOC12(root), root / "la", tmp_path / "small", crop_size=96, normalize=normalize
    )
    with pytest.raises(ValueError, match=r"small/2007_000002.npz.*2007_000002"):
        ds[0]


def test_aff_dataset_rejects_crop_too_small_for_radius(voc):
    root, _ = voc
    with pytest.raises(ValueError, match="too small"):
        VOC12AffDataset(root / "one.txt", VOC12(root), root / "la", root / "ha", crop_size=64, normalize=normalize)
