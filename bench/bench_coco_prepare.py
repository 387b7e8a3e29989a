"""Benchmark of ``python -m coco14.prepare`` (docs/datasets.md#coco-2014) on synthetic COCO-sized annotations.

Writes ``instances_{train,val}2014.json`` for ``--num_images`` 640x480 images (JSON entries only: prepare does not
read the JPEGs) with about 7 annotations each, as in COCO: mostly polygons of 10-50 vertices, some compressed RLE
and some crowd annotations in uncompressed RLE; about 1% of the images have none. Then times ``coco14.prepare.main``
with ``--num_workers 1`` and ``2`` (every PNG rewritten, ``--overwrite``), and the reading and validation of the
JSON alone, and projects the time for COCO-2014's 123,287 images.

Usage: ``python -m bench.bench_coco_prepare [--num_images 2000] [--recipe recam] [--results bench/RESULTS.md]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from bench.benchutils import add_results_flag, cpu_model, record, timed
from coco14 import prepare
from coco14.dataset import CATEGORIES, SPLITS

SECTION = "## COCO-2014 prepare"
HEIGHT, WIDTH = 480, 640
COCO_IMAGES = 123_287  # train2014 82,783 + val2014 40,504


def star_polygon(rng: np.random.Generator) -> list[float]:
    """A random star-shaped polygon of 10-50 vertices (flattened x, y), clipped to the image."""
    n = int(rng.integers(10, 51))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(5, 150) * rng.uniform(0.6, 1.0, n)
    cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
    xs = np.clip(cx + radius * np.cos(angles), 0, WIDTH - 1)
    ys = np.clip(cy + radius * np.sin(angles), 0, HEIGHT - 1)
    return np.round(np.stack([xs, ys], axis=1).ravel(), 2).tolist()


def ellipse(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    cy, cx = rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH)
    ry, rx = rng.uniform(5, 150, 2)
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of the column-major pixels, starting with a run of zeros (COCO's crowd format)."""
    flat = mask.flatten(order="F")
    starts = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + runs


def segmentation(rng: np.random.Generator, kind: str) -> tuple[object, float]:
    """(segmentation, area) of one synthetic instance of ``kind``: polygon, rle or crowd."""
    if kind == "polygon":
        polygons = [star_polygon(rng) for _ in range(1 + int(rng.random() < 0.15))]  # some in two parts
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, HEIGHT, WIDTH))
        return polygons, float(mask_utils.area(rle))
    mask = ellipse(rng)
    if kind == "crowd":
        return {"size": [HEIGHT, WIDTH], "counts": uncompressed_counts(mask)}, float(mask.sum())
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")}, float(mask.sum())


def make_split(split: str, num_images: int, rng: np.random.Generator) -> dict:
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        file_name = f"COCO_{split}_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "height": HEIGHT, "width": WIDTH})
        count = 0 if rng.random() < 0.01 else 1 + int(rng.poisson(6.3))
        for _ in range(count):
            kind = rng.choice(["polygon", "rle", "crowd"], p=[0.85, 0.12, 0.03])
            segm, area = segmentation(rng, kind)
            category_id = int(CATEGORIES[int(rng.integers(len(CATEGORIES)))][0])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": segm,
                    "area": area,
                    "iscrowd": int(kind == "crowd"),
                    "bbox": [0, 0, 1, 1],
                }
            )
    categories = [{"id": cid, "name": name} for cid, name in CATEGORIES]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_tree(root: Path, num_images: int, seed: int = 0) -> dict:
    """Both splits (two thirds train, as in COCO); returns annotation count and JSON size."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    stats = {"annotations": 0, "bytes": 0}
    sizes = {"train2014": num_images - num_images // 3, "val2014": num_images // 3}
    for split in SPLITS:
        path = root / "annotations" / f"instances_{split}.json"
        dataset = make_split(split, sizes[split], rng)
        path.write_text(json.dumps(dataset))
        stats["annotations"] += len(dataset["annotations"])
        stats["bytes"] += path.stat().st_size
    return stats


def run_prepare(root: Path, workers: int, recipe: str) -> dict:
    argv = ["--coco_root", str(root), "--list_dir", str(root / "lists"), "--recipe", recipe, "--overwrite"]
    args = prepare.get_args_parser().parse_args([*argv, "--num_workers", str(workers)])
    return prepare.main(args)


def load_only(root: Path, recipe: str) -> None:
    for split in SPLITS:
        prepare.load_split(root, split, recipe)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=2000, help="synthetic images over both splits")
    parser.add_argument("--recipe", choices=prepare.RECIPES, default="recam", help="coco14.prepare --recipe")
    parser.add_argument("--repeats", type=int, default=1, help="best-of repeats of each timing")
    add_results_flag(parser, SECTION)
    return parser


def main() -> None:
    cli = get_args_parser().parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("coco14.prepare").setLevel(logging.ERROR)  # the synthetic lists differ from the shipped ones
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "COCO2014"
        start = time.perf_counter()
        stats = make_tree(root, cli.num_images)
        print(
            f"generated {cli.num_images} images, {stats['annotations']} annotations in "
            f"{time.perf_counter() - start:.1f}s"
        )
        run_prepare(root, 2, cli.recipe)  # first writes: folders, page cache
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # the progress bars
            load, one, two = timed(
                cli.repeats,
                lambda: load_only(root, cli.recipe),
                lambda: run_prepare(root, 1, cli.recipe),
                lambda: run_prepare(root, 2, cli.recipe),
            )
    lines = report(cli, stats, load, one, two)
    print("\n" + "\n".join(lines))
    record(cli.results, SECTION, "\n".join(lines))


def report(cli: argparse.Namespace, stats: dict, load, one, two) -> list[str]:
    n = cli.num_images
    lines = [
        f"{cpu_model()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; load average "
        f"{os.getloadavg()[0]:.1f} at the end (other jobs share this machine). "
        f"`python -m bench.bench_coco_prepare --num_images {n} --recipe {cli.recipe}`: {n} synthetic 640x480 images, "
        f"{stats['annotations']} annotations ({stats['annotations'] / n:.1f} per image; 85% polygons of 10-50 "
        f"vertices, 12% compressed RLE, 3% crowd in uncompressed RLE), {stats['bytes'] / 2**20:.1f} MiB of JSON "
        f"({stats['bytes'] / stats['annotations']:.0f} bytes per annotation). Wall s of one full run "
        "(read + validate both JSON files, lists, labels, every PNG rewritten); CPU s: this process and its workers.",
        "",
        "| what | wall s | CPU s | images / s | projected for 123,287 images | CPU ms / image |",
        "|---|---|---|---|---|---|",
    ]
    for name, (wall, cpu, _) in (
        ("read + validate + index the JSON only", load),
        ("`--num_workers 1`", one),
        ("`--num_workers 2`", two),
    ):
        minutes = COCO_IMAGES / (n / wall) / 60
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {n / wall:.0f} | {minutes:.1f} min | {1e3 * cpu / n:.2f} |")
    cpu_minutes = COCO_IMAGES * two[1] / n / 60
    lines += [
        "",
        f"The whole run costs {1e3 * two[1] / n:.1f} CPU ms per image, {cpu_minutes:.0f} CPU minutes for COCO-2014: "
        f"about {cpu_minutes / 2:.0f} min on 2 idle cores, {cpu_minutes / 8:.0f} min on 8 (the workers share nothing "
        "but the file system). The wall-clock projections above hold for this machine under its load at the time.",
    ]
    return lines


if __name__ == "__main__":
    main()
