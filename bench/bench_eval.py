"""Benchmark of ``evaluation.py`` (docs/method.md#evaluation) on synthetic VOC-sized data.

Generates palette PNG pairs (500x375, ground truth with 255 borders, a
prediction that roughly agrees) and CAM ``.npz`` files in a temporary folder,
then times, in one run:

- mask evaluation: (a) decoding every PNG in one thread (the floor for a serial
  evaluator), (b) ``evaluation.main`` with its default workers, (c) a
  per-class-loop evaluator like the reference's (boolean masks per class, one
  process);
- the background-threshold curve over CAM files: ``--curve`` (one pass) against
  60 separate ``--t`` evaluations, checking that they agree exactly.

Usage: ``python -m bench.bench_eval [--num_images 1464] [--num_cams 300]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import evaluation
from bench.benchutils import add_results_flag, cpu_model, record, timed
from tool import layout
from tool.dataset import color_map
from tool.fileio import save_png, save_scores
from voc12.voc import NUM_CLASSES, NUM_FG_CLASSES

HEIGHT, WIDTH = 375, 500


SECTION = "## Evaluation"


def random_objects(rng: np.random.Generator, num_objects: int) -> list[tuple[int, float, float, float, float]]:
    """(class 1..NUM_FG_CLASSES, centre y, centre x, semi-axis y, semi-axis x) of a few ellipses."""
    return [
        (
            int(rng.integers(1, NUM_FG_CLASSES + 1)),
            rng.uniform(0.2, 0.8) * HEIGHT,
            rng.uniform(0.2, 0.8) * WIDTH,
            rng.uniform(0.1, 0.4) * HEIGHT,
            rng.uniform(0.1, 0.4) * WIDTH,
        )
        for _ in range(num_objects)
    ]


def draw(objects, jitter: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for cls, cy, cx, ry, rx in objects:
        cy, cx = cy + rng.normal(0, jitter * ry), cx + rng.normal(0, jitter * rx)
        ry, rx = ry * rng.uniform(1 - jitter, 1 + jitter), rx * rng.uniform(1 - jitter, 1 + jitter)
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = cls
    return mask


def void_borders(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """VOC-style 255 band along every class boundary."""
    edge = np.zeros(mask.shape, bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    band = edge.copy()
    for shift in range(1, width + 1):
        band[shift:, :] |= edge[:-shift, :]
        band[:, shift:] |= edge[:, :-shift]
    out = mask.copy()
    out[band] = 255
    return out


def make_data(root: Path, num_images: int, num_cams: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    palette = color_map()
    for sub in ("gt", "pred", "cam"):
        (root / sub).mkdir()
    ids = [f"img_{i:05d}" for i in range(max(num_images, num_cams))]
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for i, image_id in enumerate(ids):
        objects = random_objects(rng, int(rng.integers(1, 4)))
        gt = void_borders(draw(objects, 0.0, rng))
        save_png(layout.label_png(root / "gt", image_id), gt, palette)
        if i < num_images:
            save_png(layout.label_png(root / "pred", image_id), draw(objects, 0.15, rng), palette)
        if i < num_cams:
            classes = sorted({obj[0] for obj in objects})
            cams = np.zeros((len(classes), HEIGHT, WIDTH), np.float32)
            for cls, cy, cx, ry, rx in objects:
                blob = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
                k = classes.index(cls)
                cams[k] = np.maximum(cams[k], blob * rng.uniform(0.5, 1.0))
            cams /= cams.reshape(len(classes), -1).max(1)[:, None, None] + 1e-5
            save_scores(layout.score_npz(root / "cam", image_id), np.array(classes) - 1, cams, kind="cam")
    for name, n in (("masks.txt", num_images), ("cams.txt", num_cams)):
        (root / name).write_text("".join(f"{image_id}\n" for image_id in ids[:n]))
    return ids[:num_images], ids[:num_cams]


def decode_all(root: Path, ids: list[str]) -> None:
    for image_id in ids:
        for sub in ("gt", "pred"):
            with Image.open(layout.label_png(root / sub, image_id)) as img:
                np.asarray(img)


def per_class_loop(root: Path, ids: list[str], num_classes: int = NUM_CLASSES) -> float:
    """The reference's way: boolean masks per class per image, in one process. Returns the mIoU (%)."""
    tp, p, t = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for image_id in ids:
        gt = np.array(Image.open(layout.label_png(root / "gt", image_id)))
        pred = np.array(Image.open(layout.label_png(root / "pred", image_id)))
        valid = gt < 255
        hit = (pred == gt) * valid
        for c in range(num_classes):
            p[c] += np.sum((pred == c) * valid)
            t[c] += np.sum((gt == c) * valid)
            tp[c] += np.sum((gt == c) * hit)
    return 100 * float(np.mean(tp / (t + p - tp + 1e-10)))


def run_main(argv: list[str]) -> dict:
    args = evaluation.get_args_parser().parse_args([*argv, "--logfile", ""])
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluation.main(args)


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def parallel_capacity(n: int = 3_000_000) -> float:
    """How many CPUs' worth of work two processes get right now (2.0 on an idle 2-core machine,
    about 1.0 when other jobs keep the CPUs busy): the context for the parallel timings."""
    start = time.perf_counter()
    _spin(n)
    one = time.perf_counter() - start
    with multiprocessing.Pool(2) as pool:
        start = time.perf_counter()
        pool.map(_spin, [n, n])
        two = time.perf_counter() - start
    return 2 * one / two


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=1464, help="PNG pairs (VOC train has 1,464)")
    parser.add_argument("--num_cams", type=int, default=200, help="CAM .npz files for the curve")
    parser.add_argument("--repeats", type=int, default=5, help="best-of repeats for the fast timings")
    add_results_flag(parser, SECTION)
    return parser


def main() -> None:
    cli = get_args_parser().parse_args()

    load_before, capacity_before = os.getloadavg()[0], parallel_capacity()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        ids, _ = make_data(root, cli.num_images, cli.num_cams)
        print(
            f"generated {cli.num_images} PNG pairs and {cli.num_cams} CAM files in {time.perf_counter() - start:.1f}s"
        )
        masks = ["--list", str(root / "masks.txt"), "--gt_dir", str(root / "gt"), "--predict_dir", str(root / "pred")]
        cams = ["--list", str(root / "cams.txt"), "--gt_dir", str(root / "gt"), "--predict_dir", str(root / "cam")]
        cams += ["--type", "npy"]

        decode_all(root, ids)  # warm the page cache
        decode, ours = timed(cli.repeats, lambda: decode_all(root, ids), lambda: run_main(masks))
        (loop,) = timed(1, lambda: per_class_loop(root, ids))
        assert abs(ours[2]["mIoU"] - loop[2]) < 1e-9, (ours[2]["mIoU"], loop[2])

        (curve,) = timed(cli.repeats, lambda: run_main([*cams, "--curve"]))
        (separate,) = timed(1, lambda: [run_main([*cams, "--t", str(t)])["mIoU"] for t in evaluation.CURVE_THRESHOLDS])
        assert [point["mIoU"] for point in curve[2]["curve"]] == separate[2], "curve differs from separate passes"
    load_after, capacity_after = os.getloadavg()[0], parallel_capacity()

    workers = evaluation.get_args_parser().get_default("num_workers")
    rows = [
        ("(a) decode every PNG (GT + prediction), 1 thread", decode, ""),
        (f"(b) `evaluation.py`, {workers} workers", ours, f"(b)/(a) = {ours[0] / decode[0]:.2f}"),
        ("(c) per-class boolean masks, 1 process (reference-style)", loop, f"(c)/(b) = {loop[0] / ours[0]:.1f}"),
        (f"(d) `--type npy --curve`, {cli.num_cams} CAMs, one pass", curve, ""),
        ("(e) 60 separate `--type npy --t` runs", separate, f"(e)/(d) = {separate[0] / curve[0]:.1f}"),
    ]
    lines = [
        f"{cpu_model()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; {cli.num_images} synthetic 500x375 "
        f"palette PNG pairs (`python -m bench.bench_eval --num_images {cli.num_images} --num_cams {cli.num_cams}`). "
        f"Load average {load_before:.1f} before, {load_after:.1f} after; two processes got "
        f"{capacity_before:.1f} / {capacity_after:.1f} CPUs' worth of work before / after (2.0 = idle 2-core machine). "
        "CPU s: user + system time of the process and its finished children (the pool workers).",
        "",
        "| what | wall s | CPU s | ratio (wall) |",
        "|---|---|---|---|",
        *(f"| {name} | {wall:.2f} | {cpu:.2f} | {ratio} |" for name, (wall, cpu, _), ratio in rows),
    ]
    if min(capacity_before, capacity_after) < 1.8:
        cpu_ratio = ours[1] / decode[1]
        lines += [
            "",
            f"Other jobs shared the CPUs during this run, so (b)'s two workers could not run side by side and the "
            f"wall ratio (b)/(a) says little about the parallel target. (b) used {cpu_ratio:.2f}x the CPU time of "
            f"(a), so on an idle 2-core machine (b) should take about {cpu_ratio / 2:.2f}x (a)'s wall time "
            "(an estimate, not a measurement).",
        ]
    print("\n" + "\n".join(lines))
    record(cli.results, SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
