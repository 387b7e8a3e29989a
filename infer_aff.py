"""Random-walk propagation of CAMs with AffinityNet (docs/method.md#random-walk).

    python infer_aff.py --weights resnet38_aff.pth --infer_list voc12/train.txt \
        --cam_dir out_cam --voc12_root VOC2012 --out_rw out_rw

For each image: predict the pair affinities on the stride-8 grid, build the
transition matrix T (affinities ** beta, column-normalised) and propagate the
grid-pooled CAMs, with a constant background score, by ``T ** (2 ** logt)``.
``tool.randomwalk.propagate`` does this without forming the dense T (a sparse matrix).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine import flags, inference
from engine.script import ScriptEnv
from tool import autothreshold, cli, layout, pyutils, torchutils
from tool.camutils import BG_SCORE
from tool.crf import crf_inference
from tool.dataset import load_img_id_list
from tool.fileio import load_scores, missing_score_file_message, save_png, save_scores, score_file
from tool.imutils import hwc_to_chw
from tool.randomwalk import min_grid, propagate
from voc12.data import VOC12ImageDataset

logger = logging.getLogger(__name__)
# The sparse walk costs one sparse product per step, 2 ** logt steps: logt 12 is already 16x the reference's 256
# steps, while logt 40 would run for ever. The walk has converged long before.
MAX_LOGT = 12
LOGT_BOUND_REASON = f"the walk takes 2 ** logt sparse steps; 2 ** {MAX_LOGT} is 16x the reference's 2 ** 8"


def get_args_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="Propagate CAMs by random walk with AffinityNet affinities", script="infer_aff"
    )
    flags.add_weights_flag(parser, "trained AffinityNet .pth")
    flags.add_network_flags(parser, "network.resnet38_aff", width_help="channel width multiplier of the network")
    flags.add_num_workers_flag(parser, help="DataLoader worker processes (default 8, at most the usable CPUs)")
    parser.add_argument("--cam_dir", required=True, help="CAM folder written by infer_cls_ser.py --out_cam")
    flags.add_data_flags(parser, "--infer_list", list_help="images to process")
    parser.add_argument("--out_rw", required=True, help="output folder of random-walk label PNGs")
    parser.add_argument(
        "--out_rw_scores", help="also save the propagated scores (bg + present classes) on the stride-8 grid (.npz)"
    )
    parser.add_argument(
        "--beta",
        type=cli.float_range(0, 100, lo_open=True),
        default=8,
        help="affinity exponent in (0, 100] (reference: 8)",
    )
    parser.add_argument(
        "--logt",
        type=cli.int_range(0, MAX_LOGT, why=LOGT_BOUND_REASON),
        default=8,
        help=f"log2 of the number of random-walk steps, 0..{MAX_LOGT} (reference: 8)",
    )
    parser.add_argument(
        "--bg_score",
        type=cli.or_auto(cli.unit_float),
        default=BG_SCORE,
        help="constant background CAM score in [0, 1] (reference: 0.2); auto: computed from the --cam_dir CAMs of "
        "the list, written to <out_rw>/bg_score.json (docs/method.md#automatic-thresholds)",
    )
    parser.add_argument(
        "--crf",
        type=pyutils.bool_flag,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL",
        help="dense CRF (1 iteration) on the propagated scores: --crf, --crf True or --crf False (default: off)",
    )
    parser.add_argument(
        "--rw_mode",
        choices=("sparse", "dense"),
        default="sparse",
        help="sparse matrix (ours) or the reference's dense T squared logt times",
    )
    flags.add_allow_pickle_flag(parser, "the reference's pickled <id>.npy CAM files")
    flags.add_overwrite_flag(parser, "recompute images whose outputs exist")
    flags.add_device_flags(parser)
    return parser


def cam_grid(
    keys: np.ndarray, cams: np.ndarray, padded_hw: tuple[int, int], bg_score: float, num_classes: int, stride: int = 8
) -> torch.Tensor:
    """(num_classes, H, W) scores [bg_score, CAM of class k at k + 1], zero-padded to ``padded_hw`` and
    average-pooled ``stride`` x ``stride`` -> (num_classes, h, w) on the network's grid (num_classes counts the
    background)."""
    h, w = cams.shape[1:]
    full = np.zeros((num_classes, *padded_hw), np.float32)
    full[0, :h, :w] = bg_score
    full[keys + 1, :h, :w] = cams
    return F.avg_pool2d(torch.from_numpy(full)[None], stride, stride)[0]


@torch.inference_mode()
def random_walk_image(
    model: torch.nn.Module,
    image: np.ndarray,
    keys: np.ndarray,
    cams: np.ndarray,
    device: torch.device,
    *,
    bg_score: float = BG_SCORE,
    beta: float = 8,
    logt: int = 8,
    rw_mode: str = "sparse",
    crf: bool = False,
    amp: bool = False,
    num_classes: int,
) -> tuple[np.ndarray, torch.Tensor]:
    """Label map (H, W) uint8 and propagated grid scores (num_classes, h, w) for one image (flags of the same
    names; ``num_classes`` counts the background: the dataset's)."""
    height, width = image.shape[:2]
    # Pad to a multiple of the network's stride; tiny images further, so that the grid holds the network's pairs.
    radius, stride = model.radius, model.stride
    min_rows, min_cols = min_grid(radius)
    padded = (
        max(math.ceil(height / stride), min_rows) * stride,
        max(math.ceil(width / stride), min_cols) * stride,
    )
    x = torch.from_numpy(hwc_to_chw(model.normalize(image)))[None]
    x = F.pad(x, (0, padded[1] - width, 0, padded[0] - height))  # zeros after normalisation
    with torchutils.autocast(device, amp):
        aff = model(x.to(device))[0].float()  # (34, n_from)
    grid = cam_grid(keys, cams, padded, bg_score, num_classes, stride).to(device)
    scores = propagate(aff, grid, grid.shape[1:], beta=beta, logt=logt, mode=rw_mode, radius=radius)
    up = F.interpolate(scores[None], size=padded, mode="bilinear", align_corners=False)[0]
    if crf:
        image_padded = np.zeros((*padded, 3), np.uint8)
        image_padded[:height, :width] = image
        up = torch.from_numpy(crf_inference(image_padded, up.cpu().numpy(), t=1))
    label = up.argmax(dim=0)[:height, :width]
    return label.to(torch.uint8).cpu().numpy(), scores


def run_images(args: argparse.Namespace, info, ids: list[str], env: ScriptEnv, paths_of) -> int:
    """Walk and write the images ``ids`` of dataset ``info``; returns how many were processed."""
    for image_id in ids:  # every CAM file must be there before hours of work start
        cam_path = score_file(args.cam_dir, image_id, args.allow_pickle)
        if not cam_path.is_file():
            raise cli.MissingFileError(f"--cam_dir: {missing_score_file_message(cam_path)}")
    model = inference.load_model(args.network, args.width_mult, args.weights, env.device, head="aff")
    loader = DataLoader(
        VOC12ImageDataset(args.infer_list, info, ids=ids), batch_size=None, num_workers=args.num_workers
    )
    walk = {k: getattr(args, k) for k in ("bg_score", "beta", "logt", "rw_mode", "crf", "amp")}
    walk["num_classes"] = info.num_classes
    done = 0
    for image_id, image in tqdm(loader, total=len(ids), desc="random walk", disable=not env.is_main):
        image = image.numpy()
        cam_path = score_file(args.cam_dir, image_id, args.allow_pickle)
        keys, cams = load_scores(cam_path, args.allow_pickle, kind="cam", num_fg_classes=info.num_fg_classes)
        if cams.shape[1:] != image.shape[:2]:
            raise cli.InputError(f"{cam_path}: CAM is {cams.shape[1:]} but image {image_id} is {image.shape[:2]}")
        label, scores = random_walk_image(model, image, keys, cams, env.device, **walk)
        out = paths_of(image_id)
        if "rw_scores" in out:
            keep = np.concatenate([[0], keys + 1])
            save_scores(out["rw_scores"], keep, scores[keep].cpu().numpy(), "float32", kind="rw")
        save_png(out["rw"], label, info.palette)
        done += 1
    return done


def auto_bg_score(args: argparse.Namespace, info) -> Callable[[list[str], ScriptEnv], dict]:
    """``--bg_score auto``: the rule of :mod:`tool.autothreshold` on the CAMs of the list, put into ``args``;
    returns the hook that records it in ``<out_rw>/bg_score.json`` once the walk is done."""
    ids = load_img_id_list(args.infer_list, duplicates="warn")
    args.bg_score, stats = autothreshold.bg_score_from_cam_files(
        args.cam_dir, ids, info.num_fg_classes, args.allow_pickle
    )
    logger.info("--bg_score auto: %g (%s over %d images)", args.bg_score, autothreshold.RULE, stats["images"])

    def record(ids: list[str], env: ScriptEnv) -> dict:
        if env.is_main:
            autothreshold.write_record(args.out_rw, args.bg_score, stats, auto=True)
        return {"bg_score": args.bg_score}

    return record


def main(args: argparse.Namespace) -> dict:
    info = flags.dataset_of(args)
    paths_of = functools.partial(layout.rw_stage_paths, out_rw=args.out_rw, out_rw_scores=args.out_rw_scores)
    out_dirs = [("--out_rw", args.out_rw)] + ([("--out_rw_scores", args.out_rw_scores)] if args.out_rw_scores else [])
    finish = auto_bg_score(args, info) if args.bg_score == autothreshold.AUTO else None
    return inference.run_stage(
        args,
        "random walk",
        out_dirs,
        paths_of,
        lambda ids, todo, env: run_images(args, info, [ids[i] for i in todo], env, paths_of),
        finish,
    )


if __name__ == "__main__":
    cli.run(main, get_args_parser())
