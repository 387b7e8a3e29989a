"""Run the whole SSENet + AffinityNet pipeline in one work directory.

    python run_pipeline.py --preset demo                  # toy data, CPU, minutes
    python run_pipeline.py --preset paper --voc12_root VOC2012 \
        --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params  # the published recipe
    python run_pipeline.py --preset paper --dataset coco14 --dataset_root COCO2014 --weights ...  # COCO-2014

Stages, in order: (demo only: toy data, and pretraining on a separate generated classification set, the stand-in
for the ImageNet weights) -> train_cls_ser -> infer_cls_ser (CAMs, CAM predictions, CRF folders) -> evaluation of
the CAMs -> train_aff -> infer_aff (random walk) -> evaluation of the random walk. Each stage runs the standalone
script as a subprocess (the exact command is logged, so it can be re-run by hand) and is skipped when its outputs
are complete, so a killed run resumes where it stopped. At the end a table of mIoU (over all classes and over
the classes present in the ground truth) and stage times is printed and ``<work_dir>/summary.json`` is written.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import infer_cls_ser
from coco14.dataset import LABELS as COCO_LABELS
from coco14.make_toy_coco import MARKER_FILE as COCO_MARKER
from coco14.make_toy_coco import make_toy_coco
from engine import flags as script_flags
from engine.datasets import get_dataset
from folder.make_toy_folder import MARKER_FILE as FOLDER_MARKER
from folder.make_toy_folder import make_toy_folder
from tool import autothreshold, layout
from tool.dataset import list_file, load_img_id_list
from tool.fileio import atomic_path, atomic_write_text, load_label_png, load_scores
from tool.layout import RunLayout, WorkLayout
from tool.metrics import confusion, scores_from_confusion
from tool.pyutils import setup_logger
from voc12.data import load_rgb
from voc12.make_toy_voc import LIST_DIR as VOC_LIST_DIR
from voc12.make_toy_voc import MARKER_FILE as VOC_MARKER
from voc12.make_toy_voc import make_toy_voc

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent
DEMO_RANGES = ROOT / "bench" / "demo_ranges.json"  # each demo number's range over 9 runs (bench.bench_demo_grid)

# Flags of each stage, per preset. The paper preset is the reference's defaults (docs/method.md). The demo runs
# the very same SSENet and AffinityNet stages (frozen BatchNorm, the reference optimiser, --weights) at width 1/8
# on small toy images; its --weights come from the "pretrain" stage, which trains network.resnet38_pretrain
# from scratch (BatchNorm in training mode, Adam) on a separate toy classification set, as ImageNet weights come
# from a classifier trained on a set separate from VOC. Three values are set for the toy scale, each measured
# (docs/method.md#toy-data-and-the-cpu-demo): lr 0.1 (480 steps instead of the paper's ~10k), logt 2 (a 16x12
# grid instead of VOC's ~63x47: longer walks over-smooth it), 16 AffinityNet epochs; the background score and the
# CRF alphas are computed from the CAMs (auto, docs/method.md#automatic-thresholds), never read off the masks.
PRESETS = {
    "paper": {"train_cls": [], "infer_cls": [], "train_aff": [], "infer_aff": [], "train_seg": [], "infer_seg": []},
    "demo": {
        "toy": {"num_train": 192, "num_val": 24, "size": 128, "seed": 0, "min_extent": 0.12, "max_extent": 0.7},
        "pretrain_toy": {
            "num_train": 1200,
            "num_val": 32,
            "size": 128,
            "seed": 1000,
            "min_extent": 0.3,
            "max_extent": 0.9,
            "max_objects": 1,
        },
        "common": "--width_mult 0.125 --device cpu".split(),
        "train": "--num_workers 1 --print_freq 24".split(),
        "pretrain": (
            "--network network.resnet38_pretrain --ser_weight 0 --from_scratch --bn_calib_batches 0 "
            "--optimizer adam --lr 0.001 --wt_dec 0 --dropout_scale 0 --batch_size 16 --max_epoches 8 "
            "--crop_size 96 --resize_long 96 128 --val_crop_size 128"
        ).split(),
        "train_cls": (
            "--batch_size 8 --max_epoches 20 --lr 0.1 --crop_size 96 --resize_long 96 128 --val_crop_size 128"
        ).split(),
        "infer_cls": "--num_workers 1 --crf_workers 1 --bg_score auto --crf_alphas auto".split(),
        "train_aff": "--batch_size 8 --max_epoches 16 --lr 0.1 --crop_size 96".split(),
        "infer_aff": "--num_workers 1 --bg_score auto --logt 2".split(),
        "train_seg": (
            "--batch_size 8 --max_epoches 32 --lr 0.01 --crop_size 128 --scale_range 0.75 1.25 --no_color_jitter"
        ).split(),
        "infer_seg": "--num_workers 1 --scales 1.0 0.75 1.25".split(),
    },
}
STAGES = ("pretrain", "train_cls", "infer_cls", "train_aff", "infer_aff", "train_seg", "infer_seg")
STAGE_SCRIPTS = {"train_cls": "train_cls_ser.py", "train_aff": "train_aff.py", "train_seg": "train_seg.py"}
# --stages: cam = train_cls_ser + infer_cls_ser + CAM evaluation (train list); rw = train_aff + infer_aff +
# random-walk evaluation (train list); seg = train_seg on the random-walk labels + infer_seg + evaluation (val list).
STAGE_GROUPS = ("cam", "rw", "seg")

# --backbone: the network module of the CAM stages and of the affinity stages.
BACKBONES = {
    "resnet38": {"cls": "network.resnet38_cls_ser", "aff": "network.resnet38_aff", "seg": "network.resnet38_seg"},
    "vgg16": {"cls": "network.vgg16_cls_ser", "aff": "network.vgg16_aff", "seg": "network.vgg16_seg"},
}
VARIANT_NAMES = {"ssenet": "SSENet (ser_weight 1)", "baseline": "baseline (ser_weight 0)"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = script_flags.ArgumentParser(description="SSENet + AffinityNet pipeline runner", script="run_pipeline")
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True, help="paper (VOC) or demo (toy, CPU)")
    parser.add_argument("--work_dir", help="output folder (default: work_dirs/<preset>[_<dataset>])")
    script_flags.add_dataset_flags(parser)
    parser.add_argument("--weights", help="paper preset: ImageNet ResNet38 .params")
    parser.add_argument("--train_list", default="voc12/train_aug.txt", help="paper: training list")
    parser.add_argument("--val_list", default="voc12/val.txt", help="paper: validation list")
    parser.add_argument("--eval_list", default="voc12/train.txt", help="paper: list scored (train)")
    parser.add_argument("--ablation", action="store_true", help="also run the --ser_weight 0 baseline")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGE_GROUPS,
        default=list(STAGE_GROUPS),
        help="stage groups to run: cam (SSENet), rw (AffinityNet + random walk), seg (segmentation network); "
        "a group needs the outputs of the ones before it",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1],
        help="--seed of both training stages; several seeds repeat every variant and report mean and spread",
    )
    parser.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        default="resnet38",
        help="network of every stage: resnet38 (--weights .params) or vgg16 (--weights vgg16_20M.caffemodel)",
    )
    parser.add_argument(
        "--figure_images",
        type=int,
        default=4,
        help="val images in the figure: those where the random walk gains most over the CAM (0: no figure)",
    )
    for stage in STAGES:
        parser.add_argument(f"--{stage}_args", default="", help=f"extra flags for the {stage} stage")
    parser.add_argument("--toy_num_train", type=int, help="demo: toy training images")
    parser.add_argument("--toy_num_val", type=int, help="demo: toy validation images")
    parser.add_argument("--toy_size", type=int, help="demo: toy image long side, pixels")
    parser.add_argument("--pretrain_num_images", type=int, help="demo: pretraining set size")
    return parser


def argv(flags: dict) -> list[str]:
    """``{"--flag": value}`` as command-line words, values turned to strings."""
    return [word for flag, value in flags.items() for word in (flag, str(value))]


def image_miou(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes of one image's ground truth (for picking the figure's images)."""
    scores = scores_from_confusion(confusion(gt, pred, num_classes))
    return 0.0 if scores["mIoU_present"] is None else scores["mIoU_present"]


def eval_result(cam: dict | None, rw: dict | None, seg: dict | None = None) -> dict:
    """The numbers of one trained variant: mIoU over all and over the present classes, per-class IoU; a stage
    that did not run (``--stages``) is left out."""
    result = {}
    for stage, scores in (("cam", cam), ("rw", rw), ("seg", seg)):
        if scores is not None:
            result[f"{stage}_miou"] = scores["mIoU"]
            result[f"{stage}_miou_present"] = scores["mIoU_present"]
            result[f"{stage}_iou"] = {c: scores["IoU"][c] for c in scores["present_classes"]}
    return result


def mean_and_std(runs: list[dict]) -> tuple[dict, dict]:
    keys = [f"{stage}_{kind}" for stage in ("cam", "rw", "seg") for kind in ("miou", "miou_present")]
    values = {k: np.array([r[k] for r in runs], dtype=np.float64) for k in keys if k in runs[0]}
    std = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return {k: float(v.mean()) for k, v in values.items()}, std


@dataclass(frozen=True)
class Data:
    """The dataset a run reads: its folder and lists, and the label file the CAM stages get (None: the dataset's)."""

    root: Path
    train_list: Path
    val_list: Path
    eval_list: Path  # the images whose pseudo labels are scored (the train list)
    infer_list: Path  # the images CAMs and walks are made for: the scored ones, the training ones, some val ones
    cls_labels: Path | None


def write_list(path: Path, ids: list[str]) -> None:
    """``ids`` (first of each kept, in order) as a list file, rewritten only when its content changes."""
    text = "".join(f"{i}\n" for i in dict.fromkeys(ids))
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)


class Pipeline:
    """The stages of one work directory (:class:`tool.layout.WorkLayout`). A run of a variant ("ssenet", or
    "baseline" with ``--ser_weight 0``) and a seed lives in ``<work_dir>/<variant>/seed<seed>/``."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.preset = PRESETS[args.preset]
        default_work = f"work_dirs/{args.preset}" + ("" if args.dataset == "voc12" else f"_{args.dataset}")
        self.work = WorkLayout(Path(args.work_dir or default_work).resolve())
        self.stage_seconds: dict[str, float] = {}
        self.weights = args.weights
        if args.preset == "demo" and args.backbone != "resnet38":
            raise SystemExit("--preset demo pretrains a ResNet38; --backbone vgg16 needs --preset paper")
        self.data: Data | None = None  # prepare_data() sets it
        self._info = None

    @property
    def info(self):
        """The dataset's descriptor (read once its folder exists: a demo generates it first)."""
        if self._info is None:
            self._info = get_dataset(self.args.dataset, self.data.root, check=False)
        return self._info

    # ------------------------------------------------------------------ helpers

    def run(self, name: str, script: str, flags: list[str]) -> None:
        """``script`` (a file of this repository, or ``-m module``) as a subprocess; its seconds add to ``name``."""
        target = script.split() if script.startswith("-m ") else [str(ROOT / script)]
        cmd = [sys.executable, *target, *flags]
        logger.info("[%s] %s", name, shlex.join(cmd))
        start = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.time() - start

    def flags(self, stage: str) -> list[str]:
        """Preset flags for a stage, then the user's ``--<stage>_args``."""
        p = self.preset
        common = p.get("common", [])
        train = p.get("train", []) if stage.startswith(("train", "pretrain")) else []
        network = [] if stage == "pretrain" else ["--network", self.network(stage)]
        return [*network, *common, *train, *p.get(stage, []), *shlex.split(getattr(self.args, f"{stage}_args"))]

    def network(self, stage: str) -> str:
        return BACKBONES[self.args.backbone][stage.rpartition("_")[2]]

    def data_flags(self, with_labels: bool = False) -> dict:
        """``--dataset`` and ``--dataset_root`` of every stage (and ``--cls_labels`` where labels are read)."""
        flags = {"--dataset": self.args.dataset, "--dataset_root": self.data.root}
        if with_labels and self.data.cls_labels is not None:
            flags["--cls_labels"] = self.data.cls_labels
        return flags

    def crf_alphas(self, run: RunLayout) -> list[float] | None:
        """The effective ``--crf_alphas`` of ``run``'s infer_cls stage (its preset and user flags): the CRF folders.
        With ``--crf_alphas auto`` the stage's record says which (None before it ran)."""
        alphas = infer_cls_ser.crf_alphas_of(self.flags("infer_cls"))
        if alphas != [autothreshold.AUTO]:
            return alphas
        record = autothreshold.record_path(run.cam)
        return json.loads(record.read_text())["crf_alphas"] if record.exists() else None

    def train(self, name: str, stage: str, run: RunLayout, seed: int, stage_flags: dict) -> Path:
        """``stage``'s training script on the training list from ``self.weights``, unless the session's final
        weights exist (TensorBoard next to them in tb_<cls|aff|seg>); returns those weights."""
        session = run.session(self.network(stage))
        final = layout.session_files(session)["final"]
        if not final.exists():
            common = {
                **self.data_flags(),
                "--train_list": self.data.train_list,
                "--session_name": session,
                "--tblog_dir": run.tensorboard(stage.rpartition("_")[2]),
                "--weights": self.weights,
                "--seed": seed,
            }
            self.run(f"{name}/{stage}", STAGE_SCRIPTS[stage], argv({**common, **stage_flags}) + self.flags(stage))
        return final

    # ------------------------------------------------------------------ data

    def prepare_data(self) -> None:
        if self.args.preset == "demo":
            self.data = DEMO_DATA[self.args.dataset](self, self.toy_params())
            self.make_toy(make_toy_voc, self.work.pretrain_data, VOC_MARKER, self.toy_params(pretrain=True))
            return
        if self.args.weights is None:
            raise SystemExit("--preset paper needs --weights (ilsvrc-cls_rna-a1_cls1000_ep-0001.params)")
        args = self.args
        root = Path(args.dataset_root or get_dataset(args.dataset, None, check=False).root).resolve()
        labels = self.work.cls_labels if args.dataset == "voc12" else None  # VOC: a cache read from the XML
        self.data = Data(
            root, Path(args.train_list), Path(args.val_list), Path(args.eval_list), self.work.infer_list, labels
        )
        ids = load_img_id_list(self.data.eval_list)
        if "seg" in args.stages:  # the segmentation network trains on the training list's walk labels
            ids += load_img_id_list(self.data.train_list)
        write_list(self.work.infer_list, ids + load_img_id_list(self.data.val_list)[: args.figure_images])

    def toy_params(self, pretrain: bool = False) -> dict:
        """The demo's toy-set parameters, with the ``--toy_*`` / ``--pretrain_num_images`` overrides."""
        if pretrain:
            params = dict(self.preset["pretrain_toy"])
            if self.args.pretrain_num_images is not None:
                params["num_train"] = self.args.pretrain_num_images
            return params
        params = dict(self.preset["toy"])
        for key in ("num_train", "num_val", "size"):
            if getattr(self.args, f"toy_{key}") is not None:
                params[key] = getattr(self.args, f"toy_{key}")
        return params

    def make_toy(self, make, root: Path, marker: str, params: dict) -> None:
        """``make(root, **params)`` unless ``root`` holds a finished toy set (its marker file)."""
        if not (root / marker).exists():
            start = time.time()
            make(root, **params)
            self.stage_seconds["data"] = self.stage_seconds.get("data", 0.0) + time.time() - start

    def voc_demo(self, toy: dict) -> Data:
        root = self.work.toy_data("voc12")
        self.make_toy(make_toy_voc, root, VOC_MARKER, toy)
        lists = root / VOC_LIST_DIR
        train, val = list_file(lists, "train"), list_file(lists, "val")
        return Data(root, train, val, train, list_file(lists, "trainval"), self.work.cls_labels)

    def coco_demo(self, toy: dict) -> Data:
        """A toy set in the COCO-2014 layout, then ``coco14.prepare`` (masks, lists, labels) as on the real files."""
        root, lists = self.work.toy_data("coco14"), self.work.lists
        self.make_toy(make_toy_coco, root, COCO_MARKER, toy)
        if not (lists / COCO_LABELS.name).exists():
            self.run(
                "prepare", "-m coco14.prepare", argv({"--coco_root": root, "--list_dir": lists, "--num_workers": 1})
            )
        train, val = list_file(lists, "train"), list_file(lists, "val")
        write_list(self.work.infer_list, load_img_id_list(train) + load_img_id_list(val))
        return Data(root, train, val, train, self.work.infer_list, lists / COCO_LABELS.name)

    def folder_demo(self, toy: dict) -> Data:
        """A toy set in the folder layout (images/, classes.txt, labels.txt, masks/, train.txt, val.txt)."""
        root = self.work.toy_data("folder")
        self.make_toy(make_toy_folder, root, FOLDER_MARKER, toy)
        train, val = list_file(root, "train"), list_file(root, "val")
        write_list(self.work.infer_list, load_img_id_list(train) + load_img_id_list(val))
        return Data(root, train, val, train, self.work.infer_list, None)

    # ------------------------------------------------------------------ stages

    def pretrain(self) -> None:
        """Demo only: the backbone weights both training stages start from (the stand-in for ImageNet's)."""
        session = self.work.pretrain_session
        final = layout.session_files(session)["final"]
        self.weights = str(final)
        if final.exists():
            return
        root = self.work.pretrain_data
        lists = root / VOC_LIST_DIR
        flags = argv(
            {
                "--dataset": "voc12",  # a toy VOC set for every demo: the stand-in for ImageNet is separate data
                "--dataset_root": root,
                "--train_list": list_file(lists, "train"),
                "--val_list": list_file(lists, "val"),
                "--session_name": session,
                "--tblog_dir": self.work.pretrain_tensorboard,
                "--cls_labels": self.work.pretrain_labels,
            }
        )
        self.run("pretrain", "train_cls_ser.py", flags + self.flags("pretrain"))

    def cls_pipeline(self, variant: str, seed: int) -> dict:
        """train_cls_ser -> infer_cls_ser -> CAM evaluation; returns the CAM scores."""
        run = self.work.run(variant, seed)
        name = f"{variant}/seed{seed}"
        stage_flags = {"--val_list": self.data.val_list, **self.data_flags(with_labels=True)}
        if variant == "baseline":
            stage_flags["--ser_weight"] = 0
        weights = self.train(name, "train_cls", run, seed, stage_flags)
        ids = load_img_id_list(self.data.infer_list)
        alphas = self.crf_alphas(run)
        outputs = {"out_cam": run.cam, "out_cam_pred": run.cam_pred, "out_crf": run.crf, "crf_alphas": alphas or []}
        if alphas is None or not all(layout.all_exist(layout.cam_stage_paths(i, **outputs)) for i in ids):
            flags = {"--weights": weights, "--infer_list": self.data.infer_list, **self.data_flags(with_labels=True)}
            flags.update({"--out_cam": run.cam, "--out_cam_pred": run.cam_pred, "--out_crf": run.crf})
            self.run(f"{name}/infer_cls", "infer_cls_ser.py", argv(flags) + self.flags("infer_cls"))
        return self.evaluate(f"{name}/eval_cam", run.cam_pred, run.eval_json("cam"))

    def aff_pipeline(self, variant: str, seed: int) -> dict:
        """train_aff -> infer_aff -> random-walk evaluation; returns the scores."""
        run = self.work.run(variant, seed)
        name = f"{variant}/seed{seed}"
        la_crf, ha_crf = layout.la_ha_crf_dirs(run.crf, self.crf_alphas(run))
        weights = self.train(name, "train_aff", run, seed, {"--la_crf_dir": la_crf, "--ha_crf_dir": ha_crf})
        ids = load_img_id_list(self.data.infer_list)
        if not all(layout.all_exist(layout.rw_stage_paths(i, run.rw)) for i in ids):
            flags = {"--weights": weights, "--infer_list": self.data.infer_list, "--cam_dir": run.cam}
            flags.update({**self.data_flags(), "--out_rw": run.rw})
            self.run(f"{name}/infer_aff", "infer_aff.py", argv(flags) + self.flags("infer_aff"))
        return self.evaluate(f"{name}/eval_rw", run.rw, run.eval_json("rw"))

    def seg_pipeline(self, variant: str, seed: int) -> dict:
        """train_seg on the random-walk labels of the training list -> infer_seg on val -> evaluation on val."""
        run = self.work.run(variant, seed)
        name = f"{variant}/seed{seed}"
        weights = self.train(name, "train_seg", run, seed, {"--label_dir": run.rw})
        val_ids = load_img_id_list(self.data.val_list)
        if not all(layout.all_exist(layout.seg_stage_paths(i, run.seg_val)) for i in val_ids):
            flags = {"--weights": weights, "--infer_list": self.data.val_list, **self.data_flags()}
            flags["--out_seg"] = run.seg_val
            self.run(f"{name}/infer_seg", "infer_seg.py", argv(flags) + self.flags("infer_seg"))
        return self.evaluate(f"{name}/eval_seg", run.seg_val, run.eval_json("seg"), self.data.val_list)

    def evaluate(self, name: str, predict_dir: Path, json_path: Path, image_list: Path | None = None) -> dict:
        if not json_path.exists():
            flags = {"--list": image_list or self.data.eval_list, "--predict_dir": predict_dir, **self.data_flags()}
            flags.update({"--json": json_path, "--logfile": self.work.eval_log, "--comment": name})
            self.run(name, "evaluation.py", argv(flags))
        return json.loads(json_path.read_text())

    # ------------------------------------------------------------------ reporting

    def background_only(self) -> tuple[float, float]:
        """mIoU (all classes, present classes) of predicting background everywhere: the floor any CAM must beat."""
        conf = 0
        for i in load_img_id_list(self.data.eval_list):
            gt = load_label_png(self.info.mask_path(i))
            conf = conf + confusion(gt, np.zeros_like(gt), self.info.num_classes)
        scores = scores_from_confusion(conf)
        return 100 * scores["mIoU"], 100 * scores["mIoU_present"]

    def figure_ids(self, run: RunLayout, n: int) -> list[str]:
        """The ``n`` inferred val images where the random walk gains most over the CAM (per-image mIoU)."""
        inferred = set(load_img_id_list(self.data.infer_list))
        gains = []
        for i in load_img_id_list(self.data.val_list):
            if i not in inferred:
                continue
            gt = load_label_png(self.info.mask_path(i))
            cam = load_label_png(layout.cam_stage_paths(i, out_cam_pred=run.cam_pred)["cam_pred"])
            rw = load_label_png(layout.rw_stage_paths(i, run.rw)["rw"])
            k = self.info.num_classes
            gains.append((image_miou(gt, rw, k) - image_miou(gt, cam, k), i))
        return [i for _, i in sorted(gains, key=lambda g: -g[0])[:n]]

    def figure(self, run: RunLayout, path: Path, n: int) -> None:
        """Rows of (image, ground truth, CAM prediction, CRF label, random-walk label) for ``n`` val images."""
        palette = self.info.palette
        alpha = min(self.crf_alphas(run))
        rows = []
        for i in self.figure_ids(run, n):
            image = np.asarray(load_rgb(self.info.image_path(i)))
            cam_files = layout.cam_stage_paths(i, out_cam_pred=run.cam_pred, out_crf=run.crf, crf_alphas=[alpha])
            keys, scores = load_scores(cam_files[layout.crf_kind(alpha)], kind="crf")
            labels = (
                load_label_png(self.info.mask_path(i)),
                load_label_png(cam_files["cam_pred"]),
                keys[np.argmax(scores, axis=0)],
                load_label_png(layout.rw_stage_paths(i, run.rw)["rw"]),
            )
            tiles = [image] + [palette[label] for label in labels]
            rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
        if not rows:
            return
        width = max(r.shape[1] for r in rows)
        grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
        with atomic_path(path) as tmp:
            Image.fromarray(grid.astype(np.uint8)).save(tmp, format="PNG")


# How each dataset's demo makes its data (docs/datasets.md): a toy set in the dataset's own layout.
DEMO_DATA = {"voc12": Pipeline.voc_demo, "coco14": Pipeline.coco_demo, "folder": Pipeline.folder_demo}


def run_variants(pipe: Pipeline, args: argparse.Namespace) -> dict:
    """Every variant x seed through the requested stage groups; per variant the runs, their mean and spread."""
    variants = ["ssenet", "baseline"] if args.ablation else ["ssenet"]
    results = {}
    for variant in variants:
        runs = {}
        for seed in args.seeds:
            cam = pipe.cls_pipeline(variant, seed) if "cam" in args.stages else None
            rw = pipe.aff_pipeline(variant, seed) if "rw" in args.stages else None
            seg = pipe.seg_pipeline(variant, seed) if "seg" in args.stages else None
            runs[seed] = eval_result(cam, rw, seg)
        mean, std = mean_and_std(list(runs.values()))
        results[variant] = {"seeds": runs, "mean": mean, "std": std}
        if args.figure_images > 0 and {"cam", "rw"} <= set(args.stages):
            pipe.figure(pipe.work.run(variant, args.seeds[0]), pipe.work.figure(variant), args.figure_images)
    return results


def main(args: argparse.Namespace) -> dict:
    pipe = Pipeline(args)
    pipe.work.root.mkdir(parents=True, exist_ok=True)
    setup_logger(pipe.work.log)
    start = time.time()
    pipe.prepare_data()
    if args.preset == "demo":
        pipe.pretrain()
    results = run_variants(pipe, args)
    headline = dict(results["ssenet"]["seeds"][args.seeds[0]])
    floor, floor_present = pipe.background_only()
    summary = {
        "preset": args.preset,
        "dataset": args.dataset,
        "num_classes": pipe.info.num_classes,
        **headline,
        "background_only_miou": floor,
        "background_only_miou_present": floor_present,
        "variants": results,
        "stage_seconds": pipe.stage_seconds,
        "total_seconds": time.time() - start,
        "settings": {
            "work_dir": str(pipe.work.root),
            "dataset": args.dataset,
            "dataset_root": str(pipe.data.root),
            "eval_list": str(pipe.data.eval_list),
            "seeds": args.seeds,
            "weights": pipe.weights,
            "preset_flags": PRESETS[args.preset],
            "extra_flags": {s: getattr(args, f"{s}_args") for s in STAGES},
        },
    }
    atomic_write_text(pipe.work.summary, json.dumps(summary, indent=2) + "\n")
    print(format_table(summary))
    return summary


def _cell(mean: dict, std: dict, key: str, n_seeds: int) -> str:
    """``all-class / present-class`` mIoU of one stage, with the spread over seeds when there are several."""
    if f"{key}_miou" not in mean:
        return "-"
    all_classes, present = mean[f"{key}_miou"], mean[f"{key}_miou_present"]
    if n_seeds > 1:
        return f"{all_classes:5.1f}+-{std[f'{key}_miou']:.1f} / {present:4.1f}+-{std[f'{key}_miou_present']:.1f}"
    return f"{all_classes:6.2f} / {present:5.2f}"


def demo_ranges(summary: dict) -> dict | None:
    """The range of each number over the demo's 9 measured runs (bench/demo_ranges.json, written by
    ``bench.bench_demo_grid``), for a demo run of one seed on a dataset that has them; else None."""
    if summary.get("preset") != "demo" or len(summary["settings"]["seeds"]) != 1 or not DEMO_RANGES.exists():
        return None
    return json.loads(DEMO_RANGES.read_text()).get(summary["dataset"])


def _range(ranges: dict | None, key: str, name: str | None = None) -> str:
    if ranges is None or key not in ranges or (name is not None and name not in ranges[key]):
        return ""
    low, high = ranges[key] if name is None else ranges[key][name]
    return f" [{low:.1f}-{high:.1f}]"


def format_table(summary: dict) -> str:
    """mIoU over all classes and over the classes present in the ground truth, per-class IoU, stage times; for a
    single demo run, each number's range over the demo's measured runs beside it."""
    settings = summary["settings"]
    ranges = demo_ranges(summary)
    n_seeds = len(settings["seeds"])
    means = [r["mean"] for r in summary["variants"].values()]
    stages = [s for s in ("cam", "rw", "seg") if any(f"{s}_miou" in m for m in means)]
    titles = {"cam": "CAM", "rw": "CAM + RW", "seg": "seg net (val)"}
    n = summary["num_classes"]
    lines = ["", f"mIoU, all {n} classes / the classes present in the GT (CAM, RW: {settings['eval_list']}; seg: val)"]
    spread = f" (mean +- std, {n_seeds} seeds)" if n_seeds > 1 else ""
    lines.append(f"{'model' + spread:<34}" + "".join(f"{titles[s]:>24}" for s in stages))
    for variant, r in summary["variants"].items():
        cells = "".join(f"{_cell(r['mean'], r['std'], s, n_seeds):>24}" for s in stages)
        lines.append(f"{VARIANT_NAMES[variant]:<34}{cells}")
    if ranges is not None:
        cells = "".join(f"{_range(ranges, f'{s}_miou_present').strip():>24}" for s in stages)
        lines.append(f"{'range over ' + str(ranges['runs']) + ' demo runs':<34}{cells}")
    floor = f"{summary['background_only_miou']:6.2f} / {summary['background_only_miou_present']:5.2f}"
    lines.append(f"{'all background (train)':<34}{floor:>24}")
    lines.append("")
    lines.append(f"per-class IoU, {VARIANT_NAMES['ssenet']}, seed {settings['seeds'][0]}:")
    lines.append(f"{'class':<14}" + "".join(f"{titles[s]:>{27 if ranges is not None else 15}}" for s in stages))
    width = 27 if ranges is not None else 15
    for name in summary.get(f"{stages[0]}_iou", {}) if stages else ():
        cells = (f"{summary[f'{s}_iou'].get(name, 0.0):.2f}{_range(ranges, f'{s}_iou', name)}" for s in stages)
        lines.append(f"{name:<14}" + "".join(f"{c:>{width}}" for c in cells))
    if ranges is not None:
        lines.append(f"[low-high]: the range over the {ranges['runs']} runs of bench/RESULTS.md ({ranges['command']})")
    lines.append("")
    lines.append(f"{'stage':<34}{'seconds':>10}")
    for stage, seconds in summary["stage_seconds"].items():
        lines.append(f"{stage:<34}{seconds:>10.1f}")
    lines.append(f"{'total':<34}{summary['total_seconds']:>10.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
