"""Benchmark of ``infer_cls_ser.py`` (docs/method.md#ssenet-inference) against a reference-style serial loop.

On a toy VOC set (``voc12.make_toy_voc``) and a random-init 1/8-width SSENet,
both write the same outputs (CAM ``.npz``, CAM prediction PNG, CRF scores for
alphas 4 and 24) and are timed in the same run:

- ours: ``infer_cls_ser.main`` with its defaults (image and flip in one batch
  per scale, only present classes resized, CRF in ``--crf_workers`` processes
  overlapping the network);
- reference style: per image, 8 separate forwards (4 scales x flip, one image
  each), all classes resized, then the CRF for both alphas in line.

Both are run with torch's default thread count and with one thread: on a
shared machine an oversubscribed OpenMP pool can dominate the default-thread
numbers, the one-thread row isolates batching, resizing and CRF overlap.

The two sets of outputs are checked to agree before the timings are printed.

Usage: ``python -m bench.bench_infer_cls [--num_images 10] [--size 256] [--results bench/RESULTS.md]``;
``--results`` writes the table into that file's "## CAM inference" section.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import infer_cls_ser
from bench.benchutils import add_results_flag, cpu_model, record, timed
from network.resnet38_cls_ser import Net
from tool import layout
from tool.crf import crf_scores_with_alpha
from tool.dataset import color_map, load_img_id_list
from tool.fileio import load_scores, save_png, save_scores
from voc12.data import VOC12ClsDatasetMSF
from voc12.dataset import VOC12
from voc12.make_toy_voc import make_toy_voc

WIDTH = 0.125
SECTION = "## CAM inference"


def reference_style(args: argparse.Namespace, out: Path) -> tuple[int, float, float]:
    """The published loop's shape: one image per forward, every class resized, CRF in line. Same outputs as ours.

    Returns the number of images and the wall seconds spent in the network (with the CAM maths) and in the CRF.
    """
    info = VOC12(args.dataset_root)
    labels = info.load_labels(load_img_id_list(args.infer_list), args.cls_labels)
    dataset = VOC12ClsDatasetMSF(args.infer_list, info, labels, args.scales, normalize=Net.normalize)
    loader = DataLoader(dataset, batch_size=None, num_workers=args.num_workers)
    model = Net(width_mult=WIDTH)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    palette = color_map()
    t_net = t_crf = 0.0
    for item in loader:
        start = time.perf_counter()
        image = item["image"].numpy()
        h, w = image.shape[:2]
        label = item["label"].numpy()
        cam_sum = np.zeros((20, h, w), np.float32)
        with torch.no_grad():
            for pair in item["inputs"]:
                for flipped in (0, 1):
                    cam = F.relu(model(pair[flipped : flipped + 1]))
                    cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
                    cam = cam * label[:, None, None]
                    cam_sum += np.flip(cam, axis=-1) if flipped else cam
        norm_cam = cam_sum / (cam_sum.max(axis=(1, 2), keepdims=True) + 1e-5)
        keys = np.flatnonzero(label > 0)
        t_net += time.perf_counter() - start
        paths = layout.cam_stage_paths(
            item["id"], out_cam=out / "cam", out_cam_pred=out / "pred", out_crf=out / "crf", crf_alphas=args.crf_alphas
        )
        save_scores(paths["cam"], keys, norm_cam[keys], kind="cam")
        save_png(paths["cam_pred"], infer_cls_ser.cam_prediction(norm_cam, args.bg_score), palette)
        start = time.perf_counter()
        for alpha in args.crf_alphas:
            crf_keys, scores = crf_scores_with_alpha(image, keys, norm_cam[keys], alpha)
            save_scores(paths[layout.crf_kind(alpha)], crf_keys, scores, kind="crf")
        t_crf += time.perf_counter() - start
    return len(dataset), t_net, t_crf


def compare(ours: Path, ref: Path) -> float:
    """Largest absolute difference between the two runs' CAM and CRF scores (float16 files)."""
    worst = 0.0
    for path in sorted(ref.rglob("*.npz")):
        keys_ref, scores_ref = load_scores(path)
        keys_ours, scores_ours = load_scores(ours / path.relative_to(ref))
        assert np.array_equal(keys_ref, keys_ours), path
        worst = max(worst, float(np.abs(scores_ref - scores_ours).max()))
    return worst


def infer_args(tmp: Path, list_path: Path, num_workers: int, out: Path, *extra: str) -> argparse.Namespace:
    """``infer_cls_ser.py`` flags for the toy tree under ``tmp``, writing under ``out``."""
    return infer_cls_ser.get_args_parser().parse_args(
        [
            "--weights",
            str(tmp / "weights.pth"),
            "--width_mult",
            str(WIDTH),
            "--voc12_root",
            str(tmp / "voc"),
            "--infer_list",
            str(list_path),
            "--cls_labels",
            str(tmp / "labels.npz"),
            "--num_workers",
            str(num_workers),
            "--device",
            "cpu",
            "--out_cam",
            str(out / "cam"),
            "--out_cam_pred",
            str(out / "pred"),
            "--out_crf",
            str(out / "crf"),
            *extra,
        ]
    )


def report(rows: list[tuple], n: int, cli: argparse.Namespace, ours_args: argparse.Namespace) -> str:
    """The results section: the setting and one table row per torch thread count."""
    lines = [
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
        f"1-min load average at the end {os.getloadavg()[0]:.1f} (other jobs shared the CPUs).",
        f"Data: {n} toy images (long side {cli.size} px), SSENet width 1/8, random init, CPU; "
        f"scales {' '.join(map(str, ours_args.scales))} x flip; CRF alphas {ours_args.crf_alphas}; "
        f"outputs: CAM .npz, CAM PNG, 2 CRF .npz per image; DataLoader workers {cli.num_workers}; "
        f"ours with --crf_workers {ours_args.crf_workers} (the network then gets the remaining torch threads).",
        "Reference style: per image 8 forwards of 1 image, all classes resized, CRF for both alphas in line.",
        "CPU s: user + system time of the process and its finished children (loader and CRF workers).",
        "",
        "Network / CRF: the reference-style loop's wall seconds per image in the network (with the CAM maths)",
        "and in the CRF (both alphas); overlapping them can at best hide the smaller one.",
        "",
        "| torch threads | reference style s / image (CPU s) | network / CRF | infer_cls_ser.py s / image (CPU s) "
        "| speed-up |",
        "|---|---|---|---|---|",
    ]
    for threads, t_ref, cpu_ref, t_ours, cpu_ours, t_net, t_crf, _ in rows:
        lines.append(
            f"| {threads} | {t_ref / n:.3f} ({cpu_ref / n:.3f}) | {t_net / n:.3f} / {t_crf / n:.3f} "
            f"| {t_ours / n:.3f} ({cpu_ours / n:.3f}) | {t_ref / t_ours:.2f}x |"
        )
    lines += ["", f"Largest difference between the two runs' stored scores: {max(r[-1] for r in rows):.1e} (float16)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=10, help="toy images to process")
    parser.add_argument("--size", type=int, default=256, help="long side of the toy images, px")
    parser.add_argument("--num_workers", type=int, default=1, help="DataLoader workers, both loops")
    add_results_flag(parser, SECTION)
    cli = parser.parse_args()

    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_toy_voc(tmp / "voc", num_train=cli.num_images, num_val=1, size=cli.size, seed=0)
        torch.manual_seed(0)
        torch.save(Net(width_mult=WIDTH).state_dict(), tmp / "weights.pth")
        list_path = tmp / "voc" / "ImageSets" / "Segmentation" / "train.txt"
        ids = list_path.read_text().split()
        VOC12(tmp / "voc").load_labels(ids, tmp / "labels.npz")

        def args_for(out: Path, *extra: str) -> argparse.Namespace:
            return infer_args(tmp, list_path, cli.num_workers, out, *extra)

        # Warm-up (imports, page cache, first-call allocations), not timed.
        infer_cls_ser.main(args_for(tmp / "warm", "--scales", "1.0"))

        ours_args = args_for(tmp / "ours")
        rows = []
        for threads in (default_threads, 1):
            torch.set_num_threads(threads)
            for sub in ("ours", "ref"):
                shutil.rmtree(tmp / sub, ignore_errors=True)
            ((t_ours, cpu_ours, summary),) = timed(1, lambda: infer_cls_ser.main(ours_args))
            assert summary["done"] == len(ids), summary
            ((t_ref, cpu_ref, (_, t_net, t_crf)),) = timed(
                1, lambda: reference_style(args_for(tmp / "ref"), tmp / "ref")
            )
            worst = compare(tmp / "ours", tmp / "ref")
            assert worst < 2e-2, f"outputs disagree by {worst}"
            rows.append((threads, t_ref, cpu_ref, t_ours, cpu_ours, t_net, t_crf, worst))
        torch.set_num_threads(default_threads)

    text = report(rows, len(ids), cli, ours_args)
    print(text)
    record(cli.results, SECTION, text)


if __name__ == "__main__":
    main()
