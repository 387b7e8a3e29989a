"""The automatic background score against the ground-truth sweep, on finished runs of ``run_pipeline.py``.

For each run (``<work_dir>/<variant>/seed<seed>``) of a demo:

- CAM: the rule's value on the CAMs of the evaluation list (:mod:`tool.autothreshold`), against the best
  threshold of the curve of ``evaluation.py --type npy --curve``, extended to 0.00-0.99 (present-class mIoU);
- CAM + RW: the random walk with the trained AffinityNet at the rule's value (``infer_aff.py --bg_score auto``)
  against the best of a sweep of ``--bg_score`` (``--rw_sweep``), each scored by ``evaluation.py``.

Only the sweep reads masks; the rule never does. The table (dataset x seed: auto value, best value, both mIoUs)
is printed and, with ``--results``, written to its section of bench/RESULTS.md.

    python -m bench.bench_autothreshold --runs voc12=work_dirs/demo coco14=work_dirs/demo_coco14 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import evaluation
import run_pipeline
from bench.benchutils import add_results_flag, cpu_model, record
from tool import autothreshold, layout
from tool.dataset import load_img_id_list
from tool.fileio import load_scores, score_file

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Automatic background score"
CAM_SWEEP = tuple(k / 100 for k in range(100))  # 0.00 .. 0.99: the reference's curve stops at 0.59
RW_SWEEP = tuple(round(0.05 * k, 2) for k in range(1, 17))  # 0.05 .. 0.8


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def cam_scores(pipe, run, thresholds: tuple[float, ...]) -> list[float]:
    """Present-class mIoU of the run's CAMs on the evaluation list at each threshold, from one pass."""
    ids = load_img_id_list(pipe.data.eval_list)
    info = pipe.info
    conf = evaluation.evaluate(ids, run.cam, info.mask_path, "npy", thresholds, num_classes=info.num_classes)
    return [evaluation.summarize(c, info.names_with_background)["mIoU_present"] for c in conf]


def walk_score(pipe, run, bg_score, out: Path) -> tuple[float, float]:
    """(the walk's background score, present-class mIoU) of the run's AffinityNet walking its CAMs at
    ``bg_score`` (a number or ``auto``)."""
    flags = {
        "--weights": layout.session_files(run.session(pipe.network("train_aff")))["final"],
        "--infer_list": pipe.data.eval_list,
        "--cam_dir": run.cam,
        "--out_rw": out,
        "--dataset": pipe.args.dataset,
        "--dataset_root": pipe.data.root,
        "--bg_score": bg_score,
    }
    preset = _without_flag(pipe.flags("infer_aff"), "--bg_score")
    cmd = [sys.executable, str(ROOT / "infer_aff.py"), *run_pipeline.argv(flags), *preset]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    value = json.loads(autothreshold.record_path(out).read_text())["value"] if bg_score == "auto" else bg_score
    ids = load_img_id_list(pipe.data.eval_list)
    conf = evaluation.evaluate(ids, out, pipe.info.mask_path, num_classes=pipe.info.num_classes)
    return value, evaluation.summarize(conf[0], pipe.info.names_with_background)["mIoU_present"]


def _without_flag(flags: list[str], name: str) -> list[str]:
    """``flags`` without ``name`` and its one value."""
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f == name:
            skip = True
        else:
            out.append(f)
    return out


def per_class_otsu(cam_dir: Path, ids: list[str], num_fg_classes: int) -> float:
    """A candidate rule measured beside the kept one: Otsu's threshold of each class's own CAM values (over the
    images that have the class), averaged over the classes."""
    hists = np.zeros((num_fg_classes, autothreshold.BINS), np.int64)
    for image_id in ids:
        keys, cams = load_scores(score_file(cam_dir, image_id), kind="cam", num_fg_classes=num_fg_classes)
        for key, cam in zip(keys, cams, strict=True):
            hists[key] += autothreshold.max_cam_histogram(cam[None])
    values = [autothreshold.otsu_threshold(h) for h in hists if h.sum()]
    return float(np.mean([v for v in values if v is not None]))


def otsu_with_zeros(cam_dir: Path, ids: list[str], num_fg_classes: int) -> float:
    """The earlier rule, measured beside the kept one: Otsu's threshold with the clipped (0) pixels counted."""
    hist = np.zeros(autothreshold.BINS, np.int64)
    for image_id in ids:
        cams = load_scores(score_file(cam_dir, image_id), kind="cam", num_fg_classes=num_fg_classes)[1]
        hist += autothreshold.max_cam_histogram(cams, with_zeros=True)
    return autothreshold.otsu_threshold(hist)


def measure_run(pipe, variant: str, seed: int, rw_sweep: tuple[float, ...]) -> dict:
    run = pipe.work.run(variant, seed)
    ids = load_img_id_list(pipe.data.eval_list)
    auto, _ = autothreshold.bg_score_from_cam_files(run.cam, ids, pipe.info.num_fg_classes)
    per_class = per_class_otsu(run.cam, ids, pipe.info.num_fg_classes)
    with_zeros = otsu_with_zeros(run.cam, ids, pipe.info.num_fg_classes)
    thresholds = CAM_SWEEP + (auto, per_class, with_zeros)
    scores = cam_scores(pipe, run, thresholds)
    best = int(np.argmax(scores[:-3]))
    result = {"seed": seed, "cam_auto": auto, "cam_auto_miou": scores[-3]}
    result.update(cam_per_class=per_class, cam_per_class_miou=scores[-2])
    result.update(cam_with_zeros=with_zeros, cam_with_zeros_miou=scores[-1])
    result.update(cam_best=thresholds[best], cam_best_miou=scores[best])
    with tempfile.TemporaryDirectory() as tmp:
        rw_auto, rw_auto_miou = walk_score(pipe, run, "auto", Path(tmp, "auto"))
        sweep = [walk_score(pipe, run, t, Path(tmp, f"rw_{t}"))[1] for t in rw_sweep]
    k = int(np.argmax(sweep))
    result.update(rw_auto=rw_auto, rw_auto_miou=rw_auto_miou, rw_best=rw_sweep[k], rw_best_miou=sweep[k])
    return result


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | seed | CAM: auto t | mIoU | best t | mIoU | gap | RW: auto t | mIoU | best t | mIoU | gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dataset = r["dataset"]
        cam_gap, rw_gap = r["cam_best_miou"] - r["cam_auto_miou"], r["rw_best_miou"] - r["rw_auto_miou"]
        lines.append(
            f"| {dataset} | {r['seed']} | {r['cam_auto']:.3f} | {r['cam_auto_miou']:.2f} | {r['cam_best']:.2f} | "
            f"{r['cam_best_miou']:.2f} | {cam_gap:.2f} | {r['rw_auto']:.3f} | {r['rw_auto_miou']:.2f} | "
            f"{r['rw_best']:.2f} | {r['rw_best_miou']:.2f} | {rw_gap:.2f} |"
        )
    return "\n".join(lines)


def candidates_table(rows: list[dict]) -> str:
    """The CAM threshold of each candidate rule and its present-class mIoU, beside the sweep's best."""
    lines = [
        f"| dataset | seed | {autothreshold.RULE} (kept) | mIoU | Otsu with the 0 pixels | mIoU | "
        "per-class Otsu, mean | mIoU | best t | mIoU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['cam_auto']:.3f} | {r['cam_auto_miou']:.2f} | "
            f"{r['cam_with_zeros']:.3f} | {r['cam_with_zeros_miou']:.2f} | "
            f"{r['cam_per_class']:.3f} | {r['cam_per_class_miou']:.2f} | "
            f"{r['cam_best']:.2f} | {r['cam_best_miou']:.2f} |"
        )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        required=True,
        metavar="DATASET=WORK_DIR",
        help="finished run_pipeline.py --preset demo work folders and their --dataset, e.g. voc12=work_dirs/demo",
    )
    parser.add_argument("--variant", default="ssenet", help="the variant measured (ssenet or baseline)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="the seeds measured")
    parser.add_argument("--pipeline_args", default="", help="further run_pipeline.py flags the runs were made with")
    parser.add_argument("--rw_sweep", type=float, nargs="+", default=list(RW_SWEEP), help="walk --bg_score sweep")
    add_results_flag(parser, SECTION)
    return parser


def main(args: argparse.Namespace) -> list[dict]:
    rows = []
    for spec in args.runs:
        dataset, _, work_dir = spec.partition("=")
        argv = ["--preset", "demo", "--dataset", dataset, "--work_dir", work_dir, *shlex.split(args.pipeline_args)]
        pipe = run_pipeline.Pipeline(run_pipeline.get_args_parser().parse_args(argv))
        _quiet(pipe.prepare_data)
        for seed in args.seeds:
            label = f"{dataset} ({Path(work_dir).name})"  # the work folder: several pretraining draws of one dataset
            rows.append({"dataset": label, **measure_run(pipe, args.variant, seed, tuple(args.rw_sweep))})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows) + "\n\n" + candidates_table(rows)
    print(text)
    command = (
        f"python -m bench.bench_autothreshold --runs {' '.join(args.runs)} --seeds {' '.join(map(str, args.seeds))}"
        f" --rw_sweep {' '.join(map(str, args.rw_sweep))}"
    )
    record(args.results, SECTION, f"{cpu_model()}; `{command}`. Present-class mIoU in percent.\n\n{text}")
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
