"""run_pipeline.py: the demo preset at a reduced size, end to end, and resumption (issue: pipeline runner)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import run_pipeline
from tool.fileio import load_label_png, load_scores
from voc12.voc import load_img_id_list

TINY = [
    "--preset", "demo", "--ablation", "--toy_num_train", "8", "--toy_num_val", "2", "--toy_size", "72",
    "--figure_images", "2",
    "--train_cls_args", "--max_epoches 1 --batch_size 4 --crop_size 64 --resize_long 64 80 --val_crop_size 72 "
                        "--num_workers 0 --bn_calib_batches 1",
    "--infer_cls_args", "--num_workers 0 --crf_workers 0 --scales 1.0 0.5",
    "--train_aff_args", "--max_epoches 1 --batch_size 4 --crop_size 72 --num_workers 0 --bn_calib_batches 1",
    "--infer_aff_args", "--num_workers 0 --logt 4",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline") / "work"
    args = run_pipeline.get_args_parser().parse_args([*TINY, "--work_dir", str(work)])
    return work, args, run_pipeline.main(args)


def test_every_stage_wrote_its_outputs(demo):
    work, _, _ = demo
    root = work / "toy_voc"
    lists = root / "ImageSets" / "Segmentation"
    ids = load_img_id_list(lists / "trainval.txt")
    assert len(ids) == 10
    out = work / "ssenet"
    assert (out / "resnet38_cls_ser.pth").exists() and (out / "resnet38_aff.pth").exists()
    for image_id in ids:
        gt = load_label_png(root / "SegmentationClass" / f"{image_id}.png")
        classes = sorted(int(c) for c in np.unique(gt) if c not in (0, 255))
        keys, cams = load_scores(out / "cam" / f"{image_id}.npz")
        assert list(keys + 1) == classes and cams.shape[1:] == gt.shape
        for alpha in ("4.0", "24.0"):
            keys, _ = load_scores(out / f"crf_{alpha}" / f"{image_id}.npz")
            assert list(keys) == [0, *classes]
        for folder in ("cam_pred", "rw"):
            label = load_label_png(out / folder / f"{image_id}.png")
            assert label.shape == gt.shape and set(np.unique(label)) <= {0, *classes}
    figure = Image.open(work / "figure_ssenet.png")
    assert figure.width >= 5 * 72 and figure.height >= 2 * 40  # 5 columns, 2 val images


def test_summary_is_consistent(demo):
    work, _, summary = demo
    on_disk = json.loads((work / "summary.json").read_text())
    assert on_disk["cam_miou"] == summary["cam_miou"]
    for key in ("cam_miou", "rw_miou", "background_only_miou"):
        assert 0 <= on_disk[key] <= 100
    cam_eval = json.loads((work / "ssenet" / "eval_cam.json").read_text())
    rw_eval = json.loads((work / "ssenet" / "eval_rw.json").read_text())
    assert on_disk["cam_miou"] == pytest.approx(cam_eval["mIoU"])
    assert on_disk["rw_miou"] == pytest.approx(rw_eval["mIoU"])
    per_variant = ("train_cls", "infer_cls", "eval_cam", "train_aff", "infer_aff", "eval_rw")
    stages = {"data"} | {f"{v}/{s}" for v in ("ssenet", "baseline") for s in per_variant}
    assert set(on_disk["stage_seconds"]) == stages
    # --ablation: the baseline is trained with --ser_weight 0 and scored beside SSENet.
    assert set(on_disk["variants"]) == {"ssenet", "baseline"}
    log = (work / "baseline" / "resnet38_cls_ser.log").read_text()
    assert '"ser_weight": 0.0' in log and "loss_ser" not in log.split("epoch 0 done")[-1]
    assert on_disk["settings"]["preset_flags"]["common"] == ["--width_mult", "0.125", "--device", "cpu"]


def test_rerun_skips_finished_stages(demo):
    work, args, summary = demo
    mtime = (work / "ssenet" / "resnet38_aff.pth").stat().st_mtime_ns
    again = run_pipeline.main(args)
    assert again["stage_seconds"] == {}  # nothing ran
    assert again["cam_miou"] == summary["cam_miou"] and again["rw_miou"] == summary["rw_miou"]
    assert (work / "ssenet" / "resnet38_aff.pth").stat().st_mtime_ns == mtime


def test_killed_stage_resumes_only_what_is_missing(demo):
    work, args, summary = demo
    # Lose one random-walk label and the evaluation that used it: only those two stages run again.
    victim = sorted((work / "ssenet" / "rw").iterdir())[0]
    victim.unlink()
    (work / "ssenet" / "eval_rw.json").unlink()
    again = run_pipeline.main(args)
    assert set(again["stage_seconds"]) == {"ssenet/infer_aff", "ssenet/eval_rw"}
    assert victim.exists()
    assert again["rw_miou"] == pytest.approx(summary["rw_miou"])


def test_paper_preset_requires_weights(tmp_path):
    args = run_pipeline.get_args_parser().parse_args(["--preset", "paper", "--work_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--weights"):
        run_pipeline.main(args)
