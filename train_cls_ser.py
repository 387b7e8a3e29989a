"""Train the SSENet CAM network (docs/method.md#ssenet-training).

    python train_cls_ser.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params

The loss is the multilabel classification loss on the input and on a copy
downscaled by ``--branch_rate``, plus the scale-equivariance term between the
CAM of the downscaled copy and the downscaled CAM (``network.resnet38_cls_ser``).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from engine import flags, training
from network.resnet38_cls_ser import classification_loss, ssenet_loss
from tool import cli
from tool.dataset import load_img_id_list
from tool.visualization import cam_panel
from voc12.data import TrainClsTransform, ValClsTransform, VOC12ClsDataset


def get_args_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="Train SSENet (ResNet38 CAM network with scale equivariance)", script="train_cls_ser"
    )
    training.add_training_args(parser, "network.resnet38_cls_ser", batch_size=16, max_epoches=15)
    flags.add_val_list_flag(parser, "voc12/val.txt", "validation list")
    parser.add_argument(
        "--val_crop_size", type=cli.int_range(8, 4096), default=500, help="validation centre crop, pixels, 8..4096"
    )
    flags.add_cls_labels_flag(parser)
    resize_help = "random long-side resize range, pixels, 8 <= LOW <= HIGH <= 4096 (reference: 448 768)"
    flags.add_range_flag(parser, "--resize_long", cli.int_range(8, 4096), (448, 768), resize_help)
    parser.add_argument(
        "--branch_rate",
        type=cli.float_range(0, 1, lo_open=True, hi_open=True),
        default=0.3,
        help="scale of the second branch, in (0, 1) (SSENet: 0.3)",
    )
    parser.add_argument(
        "--ser_weight",
        type=cli.float_range(0, 1000),
        default=1.0,
        help="weight of the scale-equivariance loss in [0, 1000]; 0 = baseline",
    )
    return parser


def make_loss_fn(branch_rate: float, ser_weight: float):
    def loss_fn(model, batch, device):
        _, images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss, parts = ssenet_loss(model, images, labels, branch_rate, ser_weight)
        scalars = {k: v.item() for k, v in parts.items() if k.startswith("loss")}
        scalars["loss"] = loss.item()
        vis = {"image": images[0], "label": labels[0], **{k: parts[k][0] for k in ("cam", "cam_small") if k in parts}}
        return loss, scalars, vis

    return loss_fn


def make_vis_fn(denormalize):
    """CAM overlays of both branches for the first image of the batch; ``denormalize`` is the network's."""

    def vis_fn(writer, vis, step: int) -> None:
        image, label = vis["image"].float().cpu().numpy(), vis["label"].cpu().numpy()
        writer.add_image("cam", cam_panel(image, vis["cam"].detach().float().cpu().numpy(), label, denormalize), step)
        if "cam_small" in vis:
            cam_small = torch.nn.functional.interpolate(vis["cam_small"][None].detach().float(), size=image.shape[1:])
            writer.add_image("cam_small", cam_panel(image, cam_small[0].cpu().numpy(), label, denormalize), step)

    return vis_fn


@torch.no_grad()
def evaluate(model, loader, device) -> dict[str, float]:
    """Validation loss (L_cls only), averaged over images."""
    model.eval()
    total, count = 0.0, 0
    for _, images, labels in loader:
        cam = model(images.to(device))
        total += classification_loss(cam, labels.to(device)).item() * len(images)
        count += len(images)
    return {"loss_cls": total / max(count, 1)}


def main(args: argparse.Namespace) -> dict:
    info = flags.dataset_of(args)
    model = training.build_model(args, info.num_fg_classes, head="cam")
    ids = load_img_id_list(args.train_list)
    val_ids = load_img_id_list(args.val_list) if args.val_list else []
    labels = info.load_labels(ids + val_ids, args.cls_labels)
    # The network's own input normalisation (ImageNet for ResNet38, Caffe BGR means for VGG16).
    transform = TrainClsTransform(tuple(args.resize_long), args.crop_size, normalize=model.normalize)
    dataset = VOC12ClsDataset(args.train_list, info, labels, transform)
    val_fn = None
    if args.val_list:
        val_transform = ValClsTransform(args.val_crop_size, normalize=model.normalize)
        val_set = VOC12ClsDataset(args.val_list, info, labels, val_transform)
        val_loader = DataLoader(
            val_set, batch_size=max(1, args.batch_size // args.accum_steps), shuffle=False, num_workers=args.num_workers
        )

        def val_fn(model, device):
            return evaluate(model, val_loader, device)

    loss_fn = make_loss_fn(args.branch_rate, args.ser_weight)
    return training.train(args, model, dataset, loss_fn, val_fn, make_vis_fn(model.denormalize))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
