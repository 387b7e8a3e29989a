"""Segmentation inference: multi-scale, flipped predictions, optional dense CRF (docs/method.md#segmentation).

    python infer_seg.py --weights resnet38_seg.pth --infer_list voc12/val.txt --voc12_root VOC2012 --out_seg out_seg
    python evaluation.py --list voc12/val.txt --predict_dir out_seg --gt_dir VOC2012/SegmentationClass
    python infer_seg.py --weights resnet38_seg.pth --infer_list voc12/test.txt --voc12_root VOC2012_test \
        --test_server_dir submission --archive submission.tar.gz       # VOC evaluation server upload
    torchrun --nproc_per_node 4 infer_seg.py ...   # the list is split across ranks

Per image, each of ``--scales`` (PIL bicubic resize, then the network's own
``Net.normalize``: ImageNet mean/std for ResNet38, Caffe BGR means for VGG16) and its horizontal flip
go through the network as one batch; the logits are resized bilinearly to the
image, soft-maxed, un-flipped and averaged (:func:`infer_probs`). The label is
their argmax, or with ``--crf`` the argmax of the dense-CRF marginals
(``tool/crf.py``) started from them.

Outputs, one palette PNG (VOC colours, class indices 0..C, C the foreground classes) per image, written
atomically:

- ``--out_seg``: ``<out_seg>/<id>.png``, the layout ``evaluation.py`` scores;
- ``--test_server_dir``: ``<dir>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png``,
  the layout the PASCAL VOC evaluation server expects ("comp6": trained with
  data beyond VOC's own labels, here ImageNet weights); ``--archive`` packs that
  ``results/`` tree into a ``.tar.gz`` to upload once every image of the list is there.

An image whose requested outputs all exist is skipped (``--overwrite`` redoes
it); leftover temporary files of a killed run are removed.
"""

from __future__ import annotations

import argparse
import functools
import logging
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engine import flags, inference
from engine.script import ScriptEnv
from tool import cli, layout
from tool.crf import crf_inference
from tool.fileio import atomic_path, save_png
from voc12.data import VOC12ImageDatasetMSF

logger = logging.getLogger(__name__)

# SEAM's released ResNet38 retraining configuration tests at these scales, with flips.
SEG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
SERVER_SUBDIR = layout.SERVER_SUBDIR


# --------------------------------------------------------------------------- the method


@torch.inference_mode()
def infer_probs(
    model: torch.nn.Module,
    inputs: list[torch.Tensor],
    size: tuple[int, int],
    device: torch.device,
    flip: bool = True,
    amp: bool = False,
) -> np.ndarray:
    """Class probabilities of one image averaged over scales (and flips): (C + 1, H, W) float32, summing to 1.

    ``inputs`` holds one (2, 3, h_s, w_s) tensor per scale (the scaled image and
    its horizontal flip, :func:`tool.imutils.msf_inputs`); ``size`` is the
    original (H, W). Each prediction is resized (bilinear) before the softmax.
    """
    probs = None
    count = 0
    for logits in inference.msf_outputs(model, inputs, device, amp, flip):  # (B, C + 1, h_s, w_s)
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        p = torch.softmax(logits, dim=1)
        p_sum = inference.unflip_sum(p) if flip else p[0]
        probs = p_sum if probs is None else probs + p_sum
        count += len(p)
    return (probs / count).cpu().numpy()


def segment(probs: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 label map: argmax of ``probs`` (C, H, W), after the dense CRF on ``image`` when one is given."""
    if image is not None:
        probs = crf_inference(image, probs)
    return probs.argmax(axis=0).astype(np.uint8)


# --------------------------------------------------------------------------- outputs on disk


def write_archive(server_dir: str | Path, ids: list[str], archive: str | Path) -> int:
    """Pack ``<server_dir>/results/...comp6_test_cls/<id>.png`` of every id into a .tar.gz; returns the file count.

    Member names start at ``results/``, the layout the VOC server unpacks. Refuses
    (InputError naming the first one) when any image of the list is missing.
    """
    folder = Path(server_dir) / SERVER_SUBDIR
    missing = [i for i in ids if not layout.label_png(folder, i).is_file()]
    if missing:
        raise cli.InputError(
            f"--archive: {len(missing)} of {len(ids)} predictions missing in {folder}; first: {missing[0]}"
        )
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for image_id in sorted(ids):
            tar.add(layout.label_png(folder, image_id), arcname=layout.label_png(SERVER_SUBDIR, image_id).as_posix())
    return len(ids)


# --------------------------------------------------------------------------- main


def run_images(args: argparse.Namespace, info, todo: list[int], env: ScriptEnv, paths_of) -> int:
    """Predict and write ``todo`` (indices into the list of images of dataset ``info``); returns how many images
    were processed."""
    model = inference.load_model(args.network, args.width_mult, args.weights, env.device, info.num_classes, head="seg")
    msf = VOC12ImageDatasetMSF(args.infer_list, info, args.scales, normalize=model.normalize)
    # batch_size=None: items arrive one by one, uncollated (their scales have different sizes).
    pin = env.device.type == "cuda"
    loader = DataLoader(Subset(msf, todo), batch_size=None, num_workers=args.num_workers, pin_memory=pin)
    palette = info.palette
    done = 0
    with logging_redirect_tqdm():
        for item in tqdm(loader, desc="segmentation", disable=not env.is_main):
            image = item["image"].numpy()  # (H, W, 3) uint8
            probs = infer_probs(model, item["inputs"], image.shape[:2], env.device, not args.no_flip, args.amp)
            label = segment(probs, image if args.crf else None)
            for path in paths_of(item["id"]).values():
                save_png(path, label, palette)
            done += 1
    return done


def archive_on_main(server_dir: str, archive: str | None, ids: list[str], env: ScriptEnv) -> dict:
    """Rank 0 writes ``--archive`` (:func:`write_archive`) when one is asked for; returns its file count."""
    if not (archive and env.is_main):
        return {"archived": None}
    archived = write_archive(server_dir, ids, archive)
    logger.info("wrote %s (%d predictions) for the VOC evaluation server", archive, archived)
    return {"archived": archived}


# --------------------------------------------------------------------------- command line


def get_args_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="Segmentation inference: multi-scale + flip, optional dense CRF", script="infer_seg"
    )
    flags.add_weights_flag(
        parser, "trained segmentation weights (.pth state dict of train_seg.py; .params / .caffemodel need a head)"
    )
    flags.add_network_flags(
        parser,
        "network.resnet38_seg",
        network_help="network module, dotted name (network.resnet38_seg, network.vgg16_seg)",
    )
    flags.add_data_flags(parser, "--infer_list", "voc12/val.txt", "list of images to segment")
    flags.add_scales_flag(parser, SEG_SCALES, "averaged (SEAM's retraining config: 0.5 0.75 1.0 1.25 1.5 1.75)")
    parser.add_argument("--no_flip", action="store_true", help="do not add the horizontal flip of every scale")
    parser.add_argument(
        "--crf",
        action="store_true",
        help="refine the averaged probabilities with the dense CRF of tool/crf.py (SEAM's config tests with a CRF)",
    )
    parser.add_argument("--out_seg", help="folder for <id>.png palette label maps")
    parser.add_argument(
        "--test_server_dir",
        help="folder for the VOC server layout results/VOC2012/Segmentation/comp6_test_cls/<id>.png",
    )
    parser.add_argument(
        "--archive", help="with --test_server_dir: write this .tar.gz of its results/ tree once every image is done"
    )
    flags.add_num_workers_flag(parser)
    flags.add_overwrite_flag(parser)
    flags.add_device_flags(parser)
    return parser


def main(args: argparse.Namespace) -> dict:
    if not (args.out_seg or args.test_server_dir):
        raise SystemExit("nothing to write: give --out_seg and/or --test_server_dir")
    if args.archive and not args.test_server_dir:
        raise SystemExit("--archive packs the --test_server_dir layout: give --test_server_dir too")
    info = flags.dataset_of(args)
    if args.test_server_dir and info.name != "voc12":
        raise SystemExit(f"--test_server_dir writes the PASCAL VOC server's layout; --dataset is {info.name}")
    paths_of = functools.partial(layout.seg_stage_paths, out_seg=args.out_seg, test_server_dir=args.test_server_dir)
    out_dirs = [("--out_seg", args.out_seg)] if args.out_seg else []
    if args.test_server_dir:
        out_dirs.append(("--test_server_dir", Path(args.test_server_dir) / SERVER_SUBDIR))
    return inference.run_stage(
        args,
        "segmentation",
        out_dirs,
        paths_of,
        lambda ids, todo, env: run_images(args, info, todo, env, paths_of),
        lambda ids, env: archive_on_main(args.test_server_dir, args.archive, ids, env),
    )


if __name__ == "__main__":
    cli.run(main, get_args_parser())
