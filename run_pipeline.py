"""Run the whole SSENet + AffinityNet pipeline in one work directory.

    python run_pipeline.py --preset demo                  # toy data, CPU, minutes
    python run_pipeline.py --preset paper --voc12_root VOC2012 \
        --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params  # the published recipe

Stages, in order: train_cls_ser -> infer_cls_ser (CAMs, CAM predictions, CRF
folders) -> evaluation of the CAMs -> train_aff -> infer_aff (random walk) ->
evaluation of the random walk. Each stage runs the standalone script as a
subprocess (the exact command is logged, so it can be re-run by hand) and is
skipped when its outputs are complete, so a killed run resumes where it
stopped. At the end a table of mIoU and stage times is printed and
``<work_dir>/summary.json`` is written.

Every script flag stays reachable: ``--train_cls_args "--lr 0.02"`` and its
siblings are appended to that stage's command and override the preset.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tool.fileio import atomic_write_text, load_label_png, load_scores
from tool.pyutils import setup_logger
from voc12.voc import load_img_id_list, segmentation_path, voc_palette

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent

# Flags of each stage, per preset. The paper preset is the reference's defaults
# (SPEC.md); the demo is sized to run end to end on 2 CPU cores in minutes:
# width 1/8, small images and crops, and - since no ImageNet weights can be had -
# training from scratch (He init + data-estimated BN statistics) with the
# optimiser's intended momentum 0.9 and a higher learning rate.
PRESETS = {
    "paper": {
        "train_cls": [],
        "infer_cls": [],
        "train_aff": [],
        "infer_aff": [],
    },
    "demo": {
        "toy": {"num_train": 192, "num_val": 24, "size": 128, "seed": 0, "min_extent": 0.15, "max_extent": 0.6},
        "common": ["--width_mult", "0.125", "--device", "cpu"],
        "train": [
            "--from_scratch", "--momentum", "0.9", "--dropout_scale", "0", "--num_workers", "1", "--print_freq", "24",
        ],
        "train_cls": [
            "--batch_size", "8", "--max_epoches", "20", "--lr", "0.01", "--crop_size", "96",
            "--resize_long", "96", "128", "--val_crop_size", "128",
        ],
        "infer_cls": ["--num_workers", "1", "--crf_workers", "1"],
        "train_aff": ["--batch_size", "8", "--max_epoches", "8", "--lr", "0.01", "--crop_size", "96"],
        "infer_aff": ["--num_workers", "1"],
    },
}  # fmt: skip


# --backbone: the network module of the CAM stages and of the affinity stages.
BACKBONES = {
    "resnet38": {"cls": "network.resnet38_cls_ser", "aff": "network.resnet38_aff"},
    "vgg16": {"cls": "network.vgg16_cls_ser", "aff": "network.vgg16_aff"},
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SSENet + AffinityNet pipeline runner")
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True, help="paper (VOC) or demo (toy, CPU)")
    parser.add_argument("--work_dir", type=str, default=None, help="output folder (default: work_dirs/<preset>)")
    parser.add_argument("--voc12_root", type=str, default="VOC2012", help="paper preset: VOC2012 devkit folder")
    parser.add_argument("--weights", type=str, default=None, help="paper preset: ImageNet ResNet38 .params")
    parser.add_argument("--train_list", type=str, default="voc12/train_aug.txt", help="paper: training list")
    parser.add_argument("--val_list", type=str, default="voc12/val.txt", help="paper: validation list")
    parser.add_argument("--eval_list", type=str, default="voc12/train.txt", help="paper: list scored (train)")
    parser.add_argument("--ablation", action="store_true", help="also run the --ser_weight 0 baseline")
    parser.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        default="resnet38",
        help="network of every stage: resnet38 (--weights .params) or vgg16 (--weights vgg16_20M.caffemodel)",
    )
    parser.add_argument("--figure_images", type=int, default=4, help="val images in the figure grid (0: none)")
    for stage in ("train_cls", "infer_cls", "train_aff", "infer_aff"):
        parser.add_argument(f"--{stage}_args", type=str, default="", help=f"extra flags for the {stage} stage")
    parser.add_argument("--toy_num_train", type=int, default=None, help="demo: toy training images")
    parser.add_argument("--toy_num_val", type=int, default=None, help="demo: toy validation images")
    parser.add_argument("--toy_size", type=int, default=None, help="demo: toy image long side, pixels")
    return parser


class Pipeline:
    """The stages of one work directory; ``variant`` is "ssenet" or "baseline" (``--ser_weight 0``)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.preset = PRESETS[args.preset]
        self.work = Path(args.work_dir or f"work_dirs/{args.preset}").resolve()
        self.stage_seconds: dict[str, float] = {}
        if args.preset == "demo":
            self.voc12_root = self.work / "toy_voc"
            lists = self.voc12_root / "ImageSets" / "Segmentation"
            self.train_list, self.val_list = lists / "train.txt", lists / "val.txt"
            self.eval_list, self.infer_list = lists / "train.txt", lists / "trainval.txt"
        else:
            self.voc12_root = Path(args.voc12_root).resolve()
            self.train_list, self.val_list = Path(args.train_list), Path(args.val_list)
            self.eval_list = Path(args.eval_list)
            self.infer_list = self.work / "infer_list.txt"  # train list + figure images of val
        self.gt_dir = self.voc12_root / "SegmentationClass"

    # ------------------------------------------------------------------ helpers

    def run(self, name: str, script: str, flags: list[str]) -> None:
        cmd = [sys.executable, str(ROOT / script), *flags]
        logger.info("[%s] %s", name, shlex.join(cmd))
        start = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.time() - start

    def flags(self, stage: str) -> list[str]:
        """Preset flags for a stage, then the user's ``--<stage>_args``."""
        p = self.preset
        common = p.get("common", [])
        train = p.get("train", []) if stage.startswith("train") else []
        network = ["--network", BACKBONES[self.args.backbone][stage.rpartition("_")[2]]]
        return [*network, *common, *train, *p.get(stage, []), *shlex.split(getattr(self.args, f"{stage}_args"))]

    def all_exist(self, folder: Path, ids: list[str], suffix: str) -> bool:
        return folder.is_dir() and all((folder / f"{i}{suffix}").exists() for i in ids)

    # ------------------------------------------------------------------ stages

    def prepare_data(self) -> None:
        if self.args.preset != "demo":
            if self.args.weights is None:
                raise SystemExit("--preset paper needs --weights (ilsvrc-cls_rna-a1_cls1000_ep-0001.params)")
            ids = load_img_id_list(self.eval_list)
            val_ids = load_img_id_list(self.val_list)[: self.args.figure_images]
            text = "".join(f"{i}\n" for i in dict.fromkeys(ids + val_ids))
            if not self.infer_list.exists() or self.infer_list.read_text() != text:
                atomic_write_text(self.infer_list, text)
            return
        from voc12.make_toy_voc import make_toy_voc

        toy = dict(self.preset["toy"])
        for key in ("num_train", "num_val", "size"):
            if getattr(self.args, f"toy_{key}") is not None:
                toy[key] = getattr(self.args, f"toy_{key}")
        if not (self.voc12_root / "toy_voc.json").exists():
            start = time.time()
            make_toy_voc(self.voc12_root, **toy)
            self.stage_seconds["data"] = time.time() - start

    def cls_pipeline(self, variant: str) -> dict:
        """train_cls_ser -> infer_cls_ser -> CAM evaluation; returns the CAM scores."""
        out = self.work / variant
        session = out / "resnet38_cls_ser"
        weights = self.args.weights
        if not session.with_suffix(".pth").exists():
            flags = [
                "--voc12_root", str(self.voc12_root), "--train_list", str(self.train_list),
                "--val_list", str(self.val_list), "--session_name", str(session),
                "--tblog_dir", str(out / "tb_cls"), "--cls_labels", str(self.work / "cls_labels.npz"),
            ]  # fmt: skip
            if weights:
                flags += ["--weights", weights]
            if variant == "baseline":
                flags += ["--ser_weight", "0"]
            self.run(f"{variant}/train_cls", "train_cls_ser.py", flags + self.flags("train_cls"))
        ids = load_img_id_list(self.infer_list)
        cam, cam_pred, crf = out / "cam", out / "cam_pred", out / "crf"
        done = all(self.all_exist(d, ids, s) for d, s in ((cam, ".npz"), (cam_pred, ".png")))
        done = done and all(self.all_exist(Path(f"{crf}_{a}"), ids, ".npz") for a in ("4.0", "24.0"))
        if not done:
            flags = [
                "--weights", str(session.with_suffix(".pth")), "--infer_list", str(self.infer_list),
                "--voc12_root", str(self.voc12_root), "--cls_labels", str(self.work / "cls_labels.npz"),
                "--out_cam", str(cam), "--out_cam_pred", str(cam_pred), "--out_crf", str(crf),
            ]  # fmt: skip
            self.run(f"{variant}/infer_cls", "infer_cls_ser.py", flags + self.flags("infer_cls"))
        return self.evaluate(f"{variant}/eval_cam", cam_pred, out / "eval_cam.json")

    def aff_pipeline(self, variant: str) -> dict:
        """train_aff -> infer_aff -> random-walk evaluation; returns the scores."""
        out = self.work / variant
        session = out / "resnet38_aff"
        if not session.with_suffix(".pth").exists():
            flags = [
                "--voc12_root", str(self.voc12_root), "--train_list", str(self.train_list),
                "--la_crf_dir", str(out / "crf_4.0"), "--ha_crf_dir", str(out / "crf_24.0"),
                "--session_name", str(session), "--tblog_dir", str(out / "tb_aff"),
            ]  # fmt: skip
            if self.args.weights:
                flags += ["--weights", self.args.weights]
            self.run(f"{variant}/train_aff", "train_aff.py", flags + self.flags("train_aff"))
        ids = load_img_id_list(self.infer_list)
        rw = out / "rw"
        if not self.all_exist(rw, ids, ".png"):
            flags = [
                "--weights", str(session.with_suffix(".pth")), "--infer_list", str(self.infer_list),
                "--cam_dir", str(out / "cam"), "--voc12_root", str(self.voc12_root), "--out_rw", str(rw),
            ]  # fmt: skip
            self.run(f"{variant}/infer_aff", "infer_aff.py", flags + self.flags("infer_aff"))
        return self.evaluate(f"{variant}/eval_rw", rw, out / "eval_rw.json")

    def evaluate(self, name: str, predict_dir: Path, json_path: Path) -> dict:
        if not json_path.exists():
            flags = [
                "--list", str(self.eval_list), "--predict_dir", str(predict_dir), "--gt_dir", str(self.gt_dir),
                "--json", str(json_path), "--logfile", str(self.work / "evallog.txt"), "--comment", name,
            ]  # fmt: skip
            self.run(name, "evaluation.py", flags)
        return json.loads(json_path.read_text())

    def background_only_miou(self) -> float:
        """mIoU of predicting background everywhere: the floor any CAM must beat."""
        from tool.metrics import confusion, scores_from_confusion

        conf = 0
        for i in load_img_id_list(self.eval_list):
            gt = load_label_png(segmentation_path(self.voc12_root, i))
            conf = conf + confusion(gt, np.zeros_like(gt))
        return 100 * scores_from_confusion(conf)["mIoU"]

    def figure(self, variant: str, path: Path, n: int) -> None:
        """Rows of (image, ground truth, CAM prediction, CRF label, random-walk label) for ``n`` val images."""
        from PIL import Image

        from voc12.data import load_rgb
        from voc12.voc import jpeg_path

        ids = load_img_id_list(self.val_list)[:n]
        palette = voc_palette()
        out = self.work / variant
        rows = []
        for i in ids:
            image = np.asarray(load_rgb(jpeg_path(self.voc12_root, i)))
            keys, scores = load_scores(out / "crf_4.0" / f"{i}.npz", kind="crf")
            crf_label = keys[np.argmax(scores, axis=0)]
            tiles = [image] + [
                palette[label]
                for label in (
                    load_label_png(segmentation_path(self.voc12_root, i)),
                    load_label_png(out / "cam_pred" / f"{i}.png"),
                    crf_label,
                    load_label_png(out / "rw" / f"{i}.png"),
                )
            ]
            rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
        width = max(r.shape[1] for r in rows)
        grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
        from tool.fileio import atomic_path

        with atomic_path(path) as tmp:
            Image.fromarray(grid.astype(np.uint8)).save(tmp, format="PNG")


def main(args: argparse.Namespace) -> dict:
    pipe = Pipeline(args)
    pipe.work.mkdir(parents=True, exist_ok=True)
    setup_logger(pipe.work / "pipeline.log")
    start = time.time()
    pipe.prepare_data()
    variants = ["ssenet", "baseline"] if args.ablation else ["ssenet"]
    results = {}
    for variant in variants:
        cam = pipe.cls_pipeline(variant)
        rw = pipe.aff_pipeline(variant)
        results[variant] = {"cam_miou": cam["mIoU"], "rw_miou": rw["mIoU"]}
        if args.figure_images > 0:
            pipe.figure(variant, pipe.work / f"figure_{variant}.png", args.figure_images)

    summary = {
        "preset": args.preset,
        "cam_miou": results["ssenet"]["cam_miou"],
        "rw_miou": results["ssenet"]["rw_miou"],
        "background_only_miou": pipe.background_only_miou(),
        "variants": results,
        "stage_seconds": pipe.stage_seconds,
        "total_seconds": time.time() - start,
        "settings": {
            "work_dir": str(pipe.work),
            "voc12_root": str(pipe.voc12_root),
            "eval_list": str(pipe.eval_list),
            "preset_flags": PRESETS[args.preset],
            "extra_flags": {
                s: getattr(args, f"{s}_args") for s in ("train_cls", "infer_cls", "train_aff", "infer_aff")
            },
        },
    }
    atomic_write_text(pipe.work / "summary.json", json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    return summary


def print_table(summary: dict) -> None:
    lines = ["", f"{'model':<28}{'CAM mIoU':>10}{'CAM+RW mIoU':>13}"]
    names = {"ssenet": "SSENet (ser_weight 1)", "baseline": "baseline (ser_weight 0)"}
    for variant, r in summary["variants"].items():
        lines.append(f"{names[variant]:<28}{r['cam_miou']:>10.2f}{r['rw_miou']:>13.2f}")
    lines.append(f"{'all background':<28}{summary['background_only_miou']:>10.2f}")
    lines.append("")
    lines.append(f"{'stage':<28}{'seconds':>10}")
    for stage, seconds in summary["stage_seconds"].items():
        lines.append(f"{stage:<28}{seconds:>10.1f}")
    lines.append(f"{'total':<28}{summary['total_seconds']:>10.1f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
