"""Train the segmentation network on pseudo labels (docs/method.md#segmentation).

    python train_seg.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
        --label_dir out_rw --train_list voc12/train_aug.txt
    python train_seg.py --network network.vgg16_seg --weights vgg16_20M.caffemodel --label_dir out_rw ...
    torchrun --nproc_per_node 4 train_seg.py ...same flags...   # --batch_size stays the total batch

The last stage of the AffinityNet pipeline: a fully supervised segmentation
network (``network.resnet38_seg``: ResNet38 + two dilation-12 convolutions; or
``--network network.vgg16_seg``, DeepLab-LargeFOV from ``vgg16_20M.caffemodel``)
learns from the random-walk labels of ``infer_aff.py`` with pixel-wise cross
entropy, 255 ignored. Defaults follow the ResNet38 retraining settings of SEAM
(its authors' answer in SEAM issue #11 and the released configuration of their
64.75 val model): SGD with momentum 0.9, lr 0.001 (new layers 10x), weight decay
5e-4, poly power 0.9, batch 10, 20k iterations (19 epochs of the 10,582 train_aug
images), random rescale 0.5-1.5, crop 448, flip and colour jitter. Images are
normalised by the network's own ``Net.normalize`` (ImageNet mean/std for
ResNet38, Caffe BGR means for VGG16), in training and in the per-epoch scoring.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from engine import flags, training
from network.resnet38_seg import segmentation_loss
from tool import cli, imutils, layout
from tool.dataset import load_img_id_list
from tool.fileio import load_label_png
from tool.metrics import confusion, scores_from_confusion
from tool.visualization import seg_panel
from voc12.data import VOC12ImageDataset, VOC12SegDataset


def get_args_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="Train a segmentation network (ResNet38, VGG16) on pseudo labels", script="train_seg"
    )
    # SEAM's released config (and its issue #11): TRAIN_BATCHES 10; 20k iterations x batch 10 over the 10,582
    # train_aug images = 18.9 epochs; TRAIN_LR 0.001 (new layers 10x); TRAIN_MOMENTUM 0.9 (no positional quirk in
    # that code); DATA_RANDOMCROP 448 (its authors also mention 321), the shared default.
    training.add_training_args(parser, "network.resnet38_seg", batch_size=10, max_epoches=19, lr=0.001, momentum=0.9)
    parser.add_argument(
        "--label_dir",
        required=True,
        help="folder of <id>.png training labels (class indices, 255 ignored): infer_aff.py --out_rw",
    )
    scale_help = "random rescale factor range, 0 < LOW <= HIGH <= 4 (SEAM config: 0.5 1.5)"
    flags.add_range_flag(parser, "--scale_range", cli.float_range(0, 4, lo_open=True), (0.5, 1.5), scale_help)
    parser.add_argument(
        "--no_color_jitter",
        action="store_true",
        help="switch off the colour jitter (brightness/contrast/saturation 0.3, hue 0.1; SEAM jitters HSV too)",
    )
    flags.add_val_list_flag(parser, "", "images scored (single scale, mIoU) after each epoch")
    parser.add_argument("--val_gt_dir", help="ground truth of --val_list (default: the dataset's masks)")
    return parser


def loss_fn(model, batch, device):
    images, labels = (t.to(device, non_blocking=True) for t in batch)
    logits = model(images)  # (N, 21, crop, crop)
    loss = segmentation_loss(logits, labels)
    vis = {"image": images[0], "label": labels[0], "logits": logits[0]}
    return loss, {"loss": loss.item()}, vis


def make_vis_fn(denormalize, palette: np.ndarray):
    """Image, training label and prediction of the first image of the batch; ``denormalize`` is the network's."""

    def vis_fn(writer, vis, step: int) -> None:
        pred = vis["logits"].detach().argmax(0).cpu().numpy()
        image, label = vis["image"].float().cpu().numpy(), vis["label"].cpu().numpy()
        writer.add_image("segmentation", seg_panel(image, label, pred, palette, denormalize), step)

    return vis_fn


@torch.no_grad()
def evaluate(model, loader, gt_path, device, normalize: imutils.Normalizer, num_classes: int) -> dict[str, float]:
    """Single-scale mIoU (over all ``num_classes`` and over the present ones, percent) of the whole images of
    ``loader``; ``gt_path(id)`` is an image's ground-truth PNG; ``normalize`` is the network's own
    (``Net.normalize``; ``model`` may be a DDP wrapper without it)."""
    model.eval()
    conf = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    for image_id, image in loader:
        x = torch.from_numpy(imutils.hwc_to_chw(normalize(image.numpy())))[None].to(device)
        pred = model(x)[0].argmax(0).cpu().numpy()
        conf += confusion(load_label_png(gt_path(image_id)), pred, num_classes)
    scores = scores_from_confusion(conf)
    present = scores["mIoU_present"]
    return {
        "mIoU": 100 * scores["mIoU"],
        "mIoU_foreground": 100 * scores["mIoU_foreground"],
        "mIoU_present": None if present is None else 100 * present,
    }


def val_gt_paths(args: argparse.Namespace, info, val_ids: list[str]):
    """``id -> ground-truth PNG`` of the validation images (``--val_gt_dir`` or the dataset's masks), all checked."""
    if args.val_gt_dir:
        gt_dir = Path(args.val_gt_dir)
        if not gt_dir.is_dir():
            raise cli.MissingFileError(f"--val_gt_dir {gt_dir}: not a folder (ground truth of --val_list)")

        def gt_path(image_id: str) -> Path:
            return layout.label_png(gt_dir, image_id)

    else:
        gt_path = info.mask_path
    missing = [i for i in val_ids if not gt_path(i).is_file()]
    if missing:
        raise cli.MissingFileError(
            f"{len(missing)} ground-truth mask(s) of --val_list {args.val_list} missing; first: {gt_path(missing[0])}"
        )
    return gt_path


def main(args: argparse.Namespace) -> dict:
    if not Path(args.label_dir).is_dir():
        raise cli.MissingFileError(f"--label_dir {args.label_dir}: not a folder (infer_aff.py --out_rw writes it)")
    info = flags.dataset_of(args)
    load_img_id_list(args.train_list)  # duplicate ids are an error here: they would weigh twice
    val_ids = load_img_id_list(args.val_list) if args.val_list else None  # scored once each
    gt_path = val_gt_paths(args, info, val_ids) if val_ids is not None else None
    model = training.build_model(args, info.num_classes, head="seg")
    dataset = VOC12SegDataset(
        args.train_list,
        info,
        args.label_dir,
        crop_size=args.crop_size,
        scale_range=tuple(args.scale_range),
        color_jitter=not args.no_color_jitter,
        normalize=model.normalize,
    )
    val_fn = None
    if val_ids is not None:
        # batch_size=None: whole images of different sizes, one by one.
        val_loader = DataLoader(VOC12ImageDataset(args.val_list, info, ids=val_ids), batch_size=None)
        normalize = model.normalize

        def val_fn(model, device):
            return evaluate(model, val_loader, gt_path, device, normalize, info.num_classes)

    vis_fn = make_vis_fn(model.denormalize, info.palette)
    return training.train(args, model, dataset, loss_fn, val_fn, vis_fn)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
