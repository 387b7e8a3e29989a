"""run_pipeline.py: the demo preset at a reduced size, end to end, and resumption (issue: pipeline runner)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import run_pipeline
from engine.datasets import get_dataset
from tool import autothreshold, layout
from tool.dataset import load_img_id_list
from tool.fileio import load_label_png, load_scores

# A reduced demo: every stage of the demo preset, with small sets, few epochs and the reference's lr 0.01 (the
# preset's 0.1 needs its larger batches). Big enough to learn a little, small enough for CI.
NO_WORKERS = " --num_workers 0"  # every stage in this process's CPU share
TINY = [
    *"--preset demo --ablation --toy_num_train 24 --toy_num_val 4 --toy_size 80".split(),
    *"--pretrain_num_images 48 --figure_images 2".split(),
    "--pretrain_args",
    "--max_epoches 2 --batch_size 8 --crop_size 64 --resize_long 64 80 --val_crop_size 80" + NO_WORKERS,
    "--train_cls_args",
    "--max_epoches 4 --batch_size 4 --crop_size 64 --resize_long 64 80 --val_crop_size 80 --lr 0.01" + NO_WORKERS,
    "--infer_cls_args",
    "--crf_workers 0 --scales 1.0 0.5" + NO_WORKERS,
    "--train_aff_args",
    "--max_epoches 1 --batch_size 4 --crop_size 72 --lr 0.01" + NO_WORKERS,
    "--infer_aff_args",
    NO_WORKERS,
    "--train_seg_args",
    "--max_epoches 1 --batch_size 4 --crop_size 64" + NO_WORKERS,
    "--infer_seg_args",
    "--scales 1.0" + NO_WORKERS,
]


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
    assert len(ids) == 28
    out = work / "ssenet" / "seed1"
    assert (out / "resnet38_cls_ser.pth").exists() and (out / "resnet38_aff.pth").exists()
    assert (work / "pretrain" / "resnet38_pretrain.pth").exists()
    # the demo preset's thresholds are automatic: the CAM stage's and the walk's records
    record = json.loads((out / "cam" / "bg_score.json").read_text())
    assert record["crf_alphas"] == autothreshold.crf_alphas_for(record["value"])
    assert 0 < json.loads((out / "rw" / "bg_score.json").read_text())["value"] < 1
    for image_id in ids:
        gt = load_label_png(root / "SegmentationClass" / f"{image_id}.png")
        classes = sorted(int(c) for c in np.unique(gt) if c not in (0, 255))
        keys, cams = load_scores(out / "cam" / f"{image_id}.npz")
        assert list(keys + 1) == classes and cams.shape[1:] == gt.shape
        for alpha in record["crf_alphas"]:
            keys, _ = load_scores(layout.crf_dir(layout.RunLayout(out).crf, alpha) / f"{image_id}.npz")
            assert list(keys) == [0, *classes]
        for folder in ("cam_pred", "rw"):
            label = load_label_png(out / folder / f"{image_id}.png")
            assert label.shape == gt.shape and set(np.unique(label)) <= {0, *classes}
    val_ids = load_img_id_list(lists / "val.txt")
    for image_id in val_ids:  # the segmentation network's val predictions
        gt = load_label_png(root / "SegmentationClass" / f"{image_id}.png")
        assert load_label_png(out / "seg_val" / f"{image_id}.png").shape == gt.shape
    figure = Image.open(work / "figure_ssenet.png")
    assert figure.width >= 5 * 80 and figure.height >= 2 * 50  # 5 columns, 2 val images


def test_the_reduced_demo_learns(demo):
    work, _, summary = demo
    epochs = [json.loads(line) for line in (work / "ssenet" / "seed1" / "resnet38_cls_ser_log.jsonl").open()]
    assert len(epochs) == 4
    assert epochs[-1]["loss_cls"] < 0.8 * epochs[0]["loss_cls"]
    assert summary["cam_miou_present"] > summary["background_only_miou_present"]


def test_summary_is_consistent(demo):
    work, _, summary = demo
    on_disk = json.loads((work / "summary.json").read_text())
    assert on_disk["cam_miou"] == summary["cam_miou"]
    for key in ("cam_miou", "rw_miou", "seg_miou", "cam_miou_present", "rw_miou_present", "seg_miou_present"):
        assert 0 <= on_disk[key] <= 100
    out = work / "ssenet" / "seed1"
    cam_eval = json.loads((out / "eval_cam.json").read_text())
    rw_eval = json.loads((out / "eval_rw.json").read_text())
    assert on_disk["cam_miou"] == pytest.approx(cam_eval["mIoU"])
    assert on_disk["rw_miou"] == pytest.approx(rw_eval["mIoU"])
    assert on_disk["cam_miou_present"] == pytest.approx(cam_eval["mIoU_present"])
    assert on_disk["rw_miou_present"] == pytest.approx(rw_eval["mIoU_present"])
    # per-class IoU of both, over the classes present in the ground truth
    assert list(on_disk["cam_iou"]) == cam_eval["present_classes"] == list(on_disk["rw_iou"])
    assert on_disk["rw_iou"] == {c: rw_eval["IoU"][c] for c in rw_eval["present_classes"]}
    seg_eval = json.loads((out / "eval_seg.json").read_text())
    assert seg_eval["list"].endswith("val.txt") and on_disk["seg_miou"] == pytest.approx(seg_eval["mIoU"])
    # the 21-class mean counts absent classes as 0: k present classes cap it at k/21 of the present-class mean
    k = len(cam_eval["present_classes"])
    assert on_disk["cam_miou"] == pytest.approx(on_disk["cam_miou_present"] * k / 21)
    per_variant = ("train_cls", "infer_cls", "eval_cam", "train_aff", "infer_aff", "eval_rw", "train_seg", "infer_seg")
    per_variant += ("eval_seg",)
    stages = {"data", "pretrain"} | {f"{v}/seed1/{s}" for v in ("ssenet", "baseline") for s in per_variant}
    assert set(on_disk["stage_seconds"]) == stages
    # --ablation: the baseline is trained with --ser_weight 0 and scored beside SSENet.
    assert set(on_disk["variants"]) == {"ssenet", "baseline"}
    assert set(on_disk["variants"]["baseline"]["seeds"]) == {"1"}
    log = (work / "baseline" / "seed1" / "resnet38_cls_ser.log").read_text()
    assert '"ser_weight": 0.0' in log and "loss_ser" not in log.split("epoch 0 done")[-1]
    assert on_disk["settings"]["preset_flags"]["common"] == ["--width_mult", "0.125", "--device", "cpu"]
    # both training stages start from the pretraining stage's weights, with the reference's optimiser
    weights = str(work / "pretrain" / "resnet38_pretrain.pth")
    for stage in ("resnet38_cls_ser", "resnet38_aff"):
        args = json.loads((out / f"{stage}.log").read_text().split("args: ", 1)[1].splitlines()[0])
        assert args["weights"] == weights and args["momentum"] is None and args["optimizer"] == "sgd"
        assert not args["from_scratch"] and args["dropout_scale"] == 1.0


def test_mean_and_std_over_seeds_and_table():
    runs = [
        {"cam_miou": 10.0, "rw_miou": 12.0, "cam_miou_present": 40.0, "rw_miou_present": 44.0},
        {"cam_miou": 14.0, "rw_miou": 16.0, "cam_miou_present": 44.0, "rw_miou_present": 50.0},
    ]
    mean, std = run_pipeline.mean_and_std(runs)
    assert mean == {"cam_miou": 12.0, "rw_miou": 14.0, "cam_miou_present": 42.0, "rw_miou_present": 47.0}
    # sample standard deviation: |a - b| / sqrt(2)
    assert std["cam_miou"] == pytest.approx(4 / np.sqrt(2)) and std["rw_miou_present"] == pytest.approx(6 / np.sqrt(2))
    summary = {
        "variants": {"ssenet": {"mean": mean, "std": std}},
        "settings": {"seeds": [1, 2], "eval_list": "train.txt"},
        "num_classes": 21,
        "background_only_miou": 4.0,
        "background_only_miou_present": 28.0,
        "cam_iou": {"background": 70.0},
        "rw_iou": {"background": 75.0},
        "stage_seconds": {"data": 1.0},
        "total_seconds": 2.0,
    }
    table = run_pipeline.format_table(summary)
    assert "(mean +- std, 2 seeds)" in table
    assert " 12.0+-2.8 / 42.0+-2.8" in table and " 14.0+-2.8 / 47.0+-4.2" in table


def test_single_demo_run_prints_the_measured_ranges(tmp_path, monkeypatch):
    """Beside each number of a one-seed demo run: its range over the measured grid (bench/demo_ranges.json)."""
    ranges = {
        "runs": 9,
        "command": "python -m bench.bench_demo_grid ...",
        "cam_miou_present": [41.25, 58.0],
        "cam_iou": {"background": [88.0, 93.5], "bird": [20.04, 51.0]},
    }
    path = tmp_path / "demo_ranges.json"
    path.write_text(json.dumps({"voc12": ranges}))
    monkeypatch.setattr(run_pipeline, "DEMO_RANGES", path)
    run = {"cam_miou": 10.0, "cam_miou_present": 50.0}
    summary = {
        "preset": "demo",
        "dataset": "voc12",
        "variants": {"ssenet": {"mean": run, "std": {k: 0.0 for k in run}}},
        "settings": {"seeds": [1], "eval_list": "train.txt"},
        "num_classes": 21,
        "background_only_miou": 4.0,
        "background_only_miou_present": 28.0,
        "cam_iou": {"background": 90.0, "bird": 30.0},
        "stage_seconds": {"data": 1.0},
        "total_seconds": 2.0,
    }
    lines = run_pipeline.format_table(summary).splitlines()
    assert any(line.startswith("range over 9 demo runs") and line.endswith("[41.2-58.0]") for line in lines)
    assert any(line.startswith("bird") and line.endswith("30.00 [20.0-51.0]") for line in lines)
    assert any(line.startswith("background") and line.endswith("90.00 [88.0-93.5]") for line in lines)
    for other in ({"dataset": "coco14"}, {"preset": "paper"}, {"settings": {"seeds": [1, 2], "eval_list": "t"}}):
        assert "[" not in run_pipeline.format_table({**summary, **other})  # no ranges measured for these


def test_demo_grid_targets():
    from bench.bench_demo_grid import failures

    run = {"cam_miou_present": 45.0, "rw_miou_present": 48.0, "seg_miou_present": 45.0}
    run |= {"rw_iou": {"background": 90.0, "bird": 20.0}, "seg_iou": {"background": 90.0, "bird": 25.0}}
    assert failures(run) == []  # every target met, each exactly at its bound
    bad = run | {"rw_miou_present": 47.9, "seg_iou": {"background": 90.0, "bird": 0.0}}
    assert failures(bad) == ["RW gains +2.9 < +3", "seg (val) bird 0.0 < 20"]
    assert failures(run | {"cam_miou_present": 39.0, "seg_miou_present": 41.9}) == [
        "CAM 39.0 < 40",
        "seg -6.1 against RW < -3",
    ]


def test_rerun_skips_finished_stages(demo):
    work, args, summary = demo
    mtime = (work / "ssenet" / "seed1" / "resnet38_aff.pth").stat().st_mtime_ns
    again = run_pipeline.main(args)
    assert again["stage_seconds"] == {}  # nothing ran
    assert again["cam_miou"] == summary["cam_miou"] and again["rw_miou"] == summary["rw_miou"]
    assert (work / "ssenet" / "seed1" / "resnet38_aff.pth").stat().st_mtime_ns == mtime


def test_killed_stage_resumes_only_what_is_missing(demo):
    work, args, summary = demo
    # Lose one random-walk label and the evaluation that used it: only those two stages run again.
    victim = sorted((work / "ssenet" / "seed1" / "rw").iterdir())[0]
    victim.unlink()
    (work / "ssenet" / "seed1" / "eval_rw.json").unlink()
    again = run_pipeline.main(args)
    assert set(again["stage_seconds"]) == {"ssenet/seed1/infer_aff", "ssenet/seed1/eval_rw"}
    assert victim.exists()
    assert again["rw_miou"] == pytest.approx(summary["rw_miou"])


def test_paper_preset_requires_weights(tmp_path):
    args = run_pipeline.get_args_parser().parse_args(["--preset", "paper", "--work_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--weights"):
        run_pipeline.main(args)


def test_pipeline_crf_folders_follow_the_infer_cls_alphas(tmp_path):
    """Issue 9: ``--infer_cls_args "--crf_alphas 3 20"`` must move the folders train_aff reads too."""

    def pipe(*extra):
        argv = ["--preset", "demo", "--work_dir", str(tmp_path), *extra]
        return run_pipeline.Pipeline(run_pipeline.get_args_parser().parse_args(argv))

    run = layout.RunLayout(tmp_path / "ssenet" / "seed1")
    assert pipe("--infer_cls_args", "--crf_alphas 1 8").crf_alphas(run) == [1.0, 8.0]
    assert pipe("--preset", "paper").crf_alphas(run) == [4.0, 24.0]  # the reference's (the last --preset wins)
    alphas = pipe("--infer_cls_args", "--crf_alphas 3 20").crf_alphas(run)
    assert alphas == [3.0, 20.0]
    assert layout.la_ha_crf_dirs(tmp_path / "crf", alphas) == (tmp_path / "crf_3.0", tmp_path / "crf_20.0")
    # auto: unknown until the infer_cls stage has recorded its choice, then the recorded pair
    auto = pipe("--infer_cls_args", "--crf_alphas auto")
    assert auto.crf_alphas(run) is None
    run.cam.mkdir(parents=True)
    autothreshold.write_record(run.cam, 0.5, {}, crf_alphas=[1.0, 8.0])
    assert auto.crf_alphas(run) == [1.0, 8.0]


# The same reduced demo on the other datasets' toy sets (no baseline): COCO-2014 through coco14.prepare, and a
# folder of images with five classes.
OTHER = [arg for arg in TINY if arg != "--ablation"]


@pytest.fixture(scope="module", params=["coco14", "folder"])
def other_demo(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"pipeline_{request.param}") / "work"
    args = run_pipeline.get_args_parser().parse_args([*OTHER, "--dataset", request.param, "--work_dir", str(work)])
    return request.param, work, run_pipeline.main(args)


def test_other_datasets_run_every_stage(other_demo):
    dataset, work, summary = other_demo
    info = get_dataset(dataset, summary["settings"]["dataset_root"], check=False)
    assert summary["dataset"] == dataset and summary["num_classes"] == info.num_classes == (
        81 if dataset == "coco14" else 6
    )
    out = work / "ssenet" / "seed1"
    infer_ids = load_img_id_list(work / "infer_list.txt")
    for image_id in infer_ids:
        gt = load_label_png(info.mask_path(image_id))
        classes = sorted(int(c) for c in np.unique(gt) if c not in (0, 255))
        keys, _ = load_scores(out / "cam" / f"{image_id}.npz", kind="cam", num_fg_classes=info.num_fg_classes)
        labelled = set((keys + 1).tolist())
        # The given labels agree with the masks; COCO's also count crowd annotations, which the recam masks leave
        # as background.
        assert labelled == set(classes) if dataset == "folder" else labelled >= set(classes)
        assert set(np.unique(load_label_png(out / "rw" / f"{image_id}.png"))) <= {0, *labelled}
    for stage in ("cam", "rw", "seg"):
        result = json.loads((out / f"eval_{stage}.json").read_text())
        assert result["dataset"] == dataset and list(result["IoU"]) == list(info.names_with_background)
        assert summary[f"{stage}_miou_present"] == pytest.approx(result["mIoU_present"])
    if dataset == "coco14":  # the lists and labels coco14.prepare made from the toy JSON
        assert "prepare" in summary["stage_seconds"]
        assert summary["settings"]["eval_list"] == str(work / "lists" / "train.txt")
    assert summary["cam_miou_present"] > summary["background_only_miou_present"]
