"""The CPU demo over pretraining seeds x training seeds: every run, the demo's targets, the spread.

    python -m bench.bench_demo_grid --root work_dirs/grid --pretrain_seeds 1 2 3 --seeds 1 2 3 \
        --results bench/RESULTS.md --ranges bench/demo_ranges.json

For each pretraining seed K it runs ``run_pipeline.py --preset demo --work_dir ROOT/pK --seeds ...
--pretrain_args "--seed K"`` (a finished stage is skipped, so a killed grid resumes and a finished one is only
read), then checks each run against the demo's targets (present-class mIoU; docs/method.md#toy-data-and-the-cpu-demo):

- CAM >= 40; CAM + RW >= CAM + 3; segmentation (val) >= CAM + RW - 3;
- every class present in the ground truth >= CLASS_MIN (20) IoU after the walk and in the segmentation
  network's val result.

It prints one row per run and the mean, std and range over all of them; ``--results`` writes them to their section
of bench/RESULTS.md and ``--ranges`` the range of each number to the JSON file ``run_pipeline.py`` prints beside a
single demo run's table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.benchutils import add_results_flag, cpu_model, record
from tool.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RANGES = Path(__file__).resolve().parent / "demo_ranges.json"
STAGES = ("cam", "rw", "seg")
TITLES = {"cam": "CAM", "rw": "CAM + RW", "seg": "seg (val)"}
# The demo's targets, present-class mIoU in percent.
CAM_MIN, RW_GAIN_MIN, SEG_DROP_MAX, CLASS_MIN = 40.0, 3.0, 3.0, 20.0


def section(dataset: str) -> str:
    return f"## Demo over pretraining x training seeds ({dataset})"


def failures(run: dict) -> list[str]:
    """The targets one run (``eval_result`` of run_pipeline.py, all three stages) misses, in words."""
    cam, rw, seg = (run[f"{s}_miou_present"] for s in STAGES)
    missed = []
    if cam < CAM_MIN:
        missed.append(f"CAM {cam:.1f} < {CAM_MIN:g}")
    if rw < cam + RW_GAIN_MIN:
        missed.append(f"RW gains {rw - cam:+.1f} < +{RW_GAIN_MIN:g}")
    if seg < rw - SEG_DROP_MAX:
        missed.append(f"seg {seg - rw:+.1f} against RW < -{SEG_DROP_MAX:g}")
    for stage in ("rw", "seg"):
        for name, iou in run[f"{stage}_iou"].items():
            if iou < CLASS_MIN:
                missed.append(f"{TITLES[stage]} {name} {iou:.1f} < {CLASS_MIN:g}")
    return missed


def run_grid(args: argparse.Namespace) -> list[dict]:
    """Run (or read) every pretraining seed's work folder; one row per (pretraining seed, seed)."""
    rows = []
    for k in args.pretrain_seeds:
        work = Path(args.root) / f"p{k}"
        command = [
            sys.executable,
            str(ROOT / "run_pipeline.py"),
            *("--preset", "demo", "--dataset", args.dataset, "--work_dir", str(work)),
            *("--seeds", *map(str, args.seeds), "--pretrain_args", f"--seed {k}"),
            *shlex.split(args.pipeline_args),
        ]
        summary_path = work / "summary.json"
        if not summary_path.exists() or not args.read_only:
            subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        summary = json.loads(summary_path.read_text())
        for seed, run in summary["variants"]["ssenet"]["seeds"].items():
            rows.append({"pretrain_seed": k, "seed": int(seed), **run, "seconds": summary["total_seconds"]})
    return rows


def lowest(run: dict, stage: str) -> str:
    name = min(run[f"{stage}_iou"], key=run[f"{stage}_iou"].get)
    return f"{run[f'{stage}_iou'][name]:.1f} ({name})"


def table(rows: list[dict]) -> str:
    head = "| pretrain seed | seed | CAM | CAM + RW | seg (val) | lowest RW class | lowest seg class | missed |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        numbers = " | ".join(f"{r[f'{s}_miou_present']:.2f}" for s in STAGES)
        missed = "; ".join(failures(r)) or "none"
        lines.append(
            f"| {r['pretrain_seed']} | {r['seed']} | {numbers} | {lowest(r, 'rw')} | {lowest(r, 'seg')} | {missed} |"
        )
    values = {s: np.array([r[f"{s}_miou_present"] for r in rows]) for s in STAGES}
    spread = " | ".join(f"{v.mean():.1f} +- {v.std(ddof=1):.1f}" for v in values.values())
    lines.append(f"| mean +- std | | {spread} | | | {sum(bool(failures(r)) for r in rows)} of {len(rows)} miss |")
    ranges = " | ".join(f"{v.min():.1f} - {v.max():.1f}" for v in values.values())
    floors = [min(min(r[f"{s}_iou"].values()) for r in rows) for s in ("rw", "seg")]
    lines.append(f"| range | | {ranges} | {floors[0]:.1f} | {floors[1]:.1f} | |")
    return "\n".join(lines)


def ranges(rows: list[dict], command: str) -> dict:
    """What ``run_pipeline.py`` prints beside a single run: each number's range over the grid."""
    out = {"runs": len(rows), "command": command, "machine": cpu_model(), "date": datetime.date.today().isoformat()}
    for s in STAGES:
        values = [r[f"{s}_miou_present"] for r in rows]
        out[f"{s}_miou_present"] = [round(min(values), 2), round(max(values), 2)]
        classes = rows[0][f"{s}_iou"]
        out[f"{s}_iou"] = {
            c: [round(min(r[f"{s}_iou"][c] for r in rows), 1), round(max(r[f"{s}_iou"][c] for r in rows), 1)]
            for c in classes
        }
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder of the grid's work folders (ROOT/p<K>)")
    parser.add_argument("--dataset", default="voc12", help="the demo's --dataset")
    parser.add_argument("--pretrain_seeds", type=int, nargs="+", default=[1, 2, 3], help="pretraining --seed values")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training --seeds")
    parser.add_argument("--pipeline_args", default="", help="further run_pipeline.py flags")
    parser.add_argument(
        "--read_only", action="store_true", help="only read finished work folders' summary.json (run the missing)"
    )
    parser.add_argument("--ranges", type=Path, help=f"write each number's range here (the runner reads {RANGES.name})")
    add_results_flag(parser, section("DATASET"))
    return parser


def main(args: argparse.Namespace) -> list[dict]:
    rows = run_grid(args)
    command = (
        f"python -m bench.bench_demo_grid --root {args.root} --dataset {args.dataset} --pretrain_seeds "
        f"{' '.join(map(str, args.pretrain_seeds))} --seeds {' '.join(map(str, args.seeds))}"
        + (f" --pipeline_args {shlex.quote(args.pipeline_args)}" if args.pipeline_args else "")
    )
    text = table(rows)
    print(text)
    record(
        args.results,
        section(args.dataset),
        f"{cpu_model()}, 2 torch threads; `{command}`. Present-class mIoU.\n\n{text}",
    )
    if args.ranges is not None:
        old = json.loads(args.ranges.read_text()) if args.ranges.exists() else {}
        atomic_write_text(args.ranges, json.dumps({**old, args.dataset: ranges(rows, command)}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main(get_args_parser().parse_args())
