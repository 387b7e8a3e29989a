"""AffinityNet stage: the affinity loss, train_aff.py and infer_aff.py (docs/method.md#affinitynet, #random-walk)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import infer_aff
import train_aff
from network.resnet38_aff import Net, affinity_loss
from tests.helpers import quick_train_flags
from tool.dataset import load_img_id_list
from tool.fileio import load_label_png, load_scores, save_scores
from voc12.make_toy_voc import make_toy_voc
from voc12.voc import segmentation_path

WIDTH = 0.125


def test_affinity_loss_hand_values():
    # One image, 2 offsets x 2 "from" pixels:
    #   aff    = [[0.5, 0.9], [0.2, 0.7]]
    #   bg_pos = [[1, 0], [0, 0]] -> L_bg  = -log(0.5 + 1e-5) / (1 + 1e-5)
    #   fg_pos = [[0, 1], [0, 0]] -> L_fg  = -log(0.9 + 1e-5) / (1 + 1e-5)
    #   neg    = [[0, 0], [1, 1]] -> L_neg = (-log(1 + 1e-5 - 0.2) - log(1 + 1e-5 - 0.7)) / (2 + 1e-5)
    aff = torch.tensor([[[0.5, 0.9], [0.2, 0.7]]], dtype=torch.float64)
    bg = torch.tensor([[[1.0, 0], [0, 0]]], dtype=torch.float64)
    fg = torch.tensor([[[0, 1.0], [0, 0]]], dtype=torch.float64)
    neg = torch.tensor([[[0, 0], [1.0, 1.0]]], dtype=torch.float64)
    loss, parts = affinity_loss(aff, bg, fg, neg)
    eps = 1e-5
    l_bg = -math.log(0.5 + eps) / (1 + eps)
    l_fg = -math.log(0.9 + eps) / (1 + eps)
    l_neg = (-math.log(1 + eps - 0.2) - math.log(1 + eps - 0.7)) / (2 + eps)
    assert parts["loss_bg"].item() == pytest.approx(l_bg, rel=1e-12)
    assert parts["loss_fg"].item() == pytest.approx(l_fg, rel=1e-12)
    assert parts["loss_neg"].item() == pytest.approx(l_neg, rel=1e-12)
    assert loss.item() == pytest.approx(l_bg / 4 + l_fg / 4 + l_neg / 2, rel=1e-12)
    # No pairs of a kind: that term is 0, not NaN.
    loss_empty, parts_empty = affinity_loss(aff, bg, torch.zeros_like(fg), neg)
    assert parts_empty["loss_fg"].item() == 0.0 and math.isfinite(loss_empty.item())


def test_cam_grid_by_hand():
    # A 12x12 image (padded to 16x16, grid 2x2) with one class (index 2, channel 3) equal to 1
    # on its top-left 8x8 block and 0.5 elsewhere inside the image.
    cams = np.full((1, 12, 12), 0.5, np.float32)
    cams[0, :8, :8] = 1.0
    grid = infer_aff.cam_grid(np.array([2]), cams, (16, 16), bg_score=0.2, num_classes=21)
    assert grid.shape == (21, 2, 2)
    # Cell (0, 0) is inside the image: mean of 1.0; cell (1, 1) holds 4x4 = 16 of its 64 pixels.
    assert grid[3, 0, 0].item() == pytest.approx(1.0)
    assert grid[3, 1, 1].item() == pytest.approx(0.5 * 16 / 64)
    assert grid[3, 0, 1].item() == pytest.approx(0.5 * 32 / 64)
    assert grid[0, 0, 0].item() == pytest.approx(0.2)
    assert grid[0, 1, 1].item() == pytest.approx(0.2 * 16 / 64)
    assert torch.count_nonzero(grid[[c for c in range(21) if c not in (0, 3)]]) == 0


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """4 toy images with CAM and CRF files made from the ground truth, and random AffinityNet weights."""
    base = tmp_path_factory.mktemp("aff")
    root = base / "VOC2012"
    make_toy_voc(root, num_train=4, num_val=1, size=64, seed=3)
    train_list = root / "ImageSets" / "Segmentation" / "train.txt"
    for image_id in load_img_id_list(train_list):
        gt = load_label_png(segmentation_path(root, image_id)).copy()
        gt[gt == 255] = 0
        classes = [int(c) for c in np.unique(gt) if c != 0]
        keys = [0, *classes]
        onehot = np.stack([(gt == k).astype(np.float32) for k in keys])
        for alpha in ("4.0", "24.0"):
            save_scores(base / f"crf_{alpha}" / f"{image_id}.npz", keys, 0.9 * onehot + 0.05, kind="crf")
        save_scores(base / "cam" / f"{image_id}.npz", np.array(classes) - 1, onehot[1:], kind="cam")
    torch.manual_seed(0)
    weights = base / "aff_random.pth"
    torch.save(Net(width_mult=WIDTH).state_dict(), weights)
    return {"base": base, "root": root, "train_list": train_list, "weights": weights}


def train_args(toy: dict, session: Path, *extra: str) -> argparse.Namespace:
    base = toy["base"]
    return train_aff.get_args_parser().parse_args(
        [
            "--voc12_root",
            str(toy["root"]),
            "--train_list",
            str(toy["train_list"]),
            "--la_crf_dir",
            str(base / "crf_4.0"),
            "--ha_crf_dir",
            str(base / "crf_24.0"),
            "--session_name",
            str(session),
            *quick_train_flags(),
            "--from_scratch",
            "--width_mult",
            str(WIDTH),
            "--crop_size",
            "72",
            "--bn_calib_batches",
            "1",
            *extra,
        ]
    )


def test_train_aff_steps_and_resumes(toy, tmp_path):
    session = tmp_path / "aff"
    summary = train_aff.main(train_args(toy, session, "--max_steps", "1"))
    assert summary["step"] == 1 and summary["max_step"] == 2
    assert (tmp_path / "aff_checkpoint.pth").exists() and not (tmp_path / "aff.pth").exists()
    summary = train_aff.main(train_args(toy, session))  # resumes from the checkpoint
    assert summary["step"] == 2
    state = torch.load(tmp_path / "aff.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert set(state) == set(Net(width_mult=WIDTH).state_dict())


def test_train_aff_missing_crf_file_is_named(toy, tmp_path):
    crf = tmp_path / "crf_4.0"
    crf.mkdir()
    with pytest.raises(FileNotFoundError, match="crf_4.0"):
        train_aff.main(train_args(toy, tmp_path / "aff", "--la_crf_dir", str(crf)))


def infer_args(toy: dict, out: Path, *extra: str) -> argparse.Namespace:
    return infer_aff.get_args_parser().parse_args(
        [
            "--weights",
            str(toy["weights"]),
            "--infer_list",
            str(toy["train_list"]),
            "--cam_dir",
            str(toy["base"] / "cam"),
            "--voc12_root",
            str(toy["root"]),
            "--out_rw",
            str(out / "rw"),
            "--width_mult",
            str(WIDTH),
            "--num_workers",
            "0",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_infer_aff_writes_labels_and_scores_and_skips(toy, tmp_path):
    args = infer_args(toy, tmp_path, "--out_rw_scores", str(tmp_path / "scores"))
    summary = infer_aff.main(args)
    ids = load_img_id_list(toy["train_list"])
    assert summary["done"] == len(ids)
    for image_id in ids:
        label_path = tmp_path / "rw" / f"{image_id}.png"
        label = load_label_png(label_path)
        gt = load_label_png(segmentation_path(toy["root"], image_id))
        assert label.shape == gt.shape
        present = {0, *(int(c) for c in np.unique(gt) if c not in (0, 255))}
        assert set(np.unique(label)) <= present  # only background and the image's classes
        keys, scores = load_scores(tmp_path / "scores" / f"{image_id}.npz")
        assert sorted(keys) == sorted(present)
        # The stride-8 grid of the padded image; a 64 px wide image is padded to 9 columns for the pairs.
        grid = (max(math.ceil(gt.shape[0] / 8), 5), max(math.ceil(gt.shape[1] / 8), 9))
        assert scores.shape == (len(keys), *grid)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "rw").iterdir()}
    again = infer_aff.main(args)
    assert again["done"] == 0 and again["skipped"] == len(ids)
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "rw").iterdir()}


def test_infer_aff_dense_mode_gives_the_same_labels(toy, tmp_path):
    infer_aff.main(infer_args(toy, tmp_path / "sparse"))
    infer_aff.main(infer_args(toy, tmp_path / "dense", "--rw_mode", "dense"))
    for path in (tmp_path / "sparse" / "rw").iterdir():
        np.testing.assert_array_equal(load_label_png(path), load_label_png(tmp_path / "dense" / "rw" / path.name))


def test_infer_aff_cam_size_mismatch_is_named(toy, tmp_path):
    cam_dir = tmp_path / "cam"
    for image_id in load_img_id_list(toy["train_list"]):
        save_scores(cam_dir / f"{image_id}.npz", [0], np.zeros((1, 5, 5), np.float32), kind="cam")
    with pytest.raises(ValueError, match=str(cam_dir)):
        infer_aff.main(infer_args(toy, tmp_path, "--cam_dir", str(cam_dir)))


def test_infer_aff_removes_temp_files_of_a_killed_run(toy, tmp_path):
    ids = load_img_id_list(toy["train_list"])
    stale = tmp_path / "rw" / f".{ids[0]}.abc123.tmp.png"  # the name tool.fileio.atomic_path gives temp files
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    infer_aff.main(infer_args(toy, tmp_path))
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "rw").iterdir()) == sorted(f"{i}.png" for i in ids)
