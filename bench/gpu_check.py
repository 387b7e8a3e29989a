"""One-device check of the CUDA paths, recorded as a section of bench/RESULTS.md.

    bash bench/gpu_check.sh                          # one GPU, full width, within 8 minutes
    python -m bench.gpu_check --device cpu --width_mult 0.125 --quick --results /tmp/RESULTS.md   # CPU dry run

It runs and records:

1. a train_cls_ser step (batch 16 at 448) and a train_aff step (batch 8 at 448), each in fp32 and with
   ``--amp`` from the same weights and inputs: losses finite, the AMP loss within ``--amp_rtol`` of the fp32
   one, peak memory and images/s;
2. ``train_cls_ser.py`` under torchrun at world size 1 (DDP, NCCL on a GPU, gloo on a CPU);
3. DataParallel on one device against the plain model (same loss);
4. ``infer_cls_ser.py`` images/s on VOC-sized (500x375) random images, CAMs only, no CRF;
5. the sparse random walk against the dense reference walk on the device at 47x63 and 94x125.

Nothing here needs pydensecrf. On a CPU the AMP runs are skipped (autocast is CUDA-only in this project).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import infer_cls_ser
from bench.bench_randomwalk import make_inputs, parse_grid
from bench.benchutils import RESULTS, add_results_flag, cpu_model, record
from network import resnet38_aff, resnet38_cls_ser
from tool import cli, torchutils
from tool.dataset import load_img_id_list
from tool.randomwalk import propagate
from voc12.make_toy_voc import make_toy_voc
from voc12.voc import NUM_FG_CLASSES, jpeg_path

SECTION = "## GPU check"
REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Check and time the CUDA paths on one device")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: a dry run)")
    parser.add_argument("--width_mult", type=cli.width_mult, default=1.0, help="network width (1/8 for a dry run)")
    parser.add_argument("--batch_cls", type=cli.positive_int, default=16, help="train_cls_ser batch (reference: 16)")
    parser.add_argument("--batch_aff", type=cli.positive_int, default=8, help="train_aff batch (reference: 8)")
    parser.add_argument("--crop", type=cli.int_range(72, 1024), default=448, help="training crop (reference: 448)")
    parser.add_argument("--steps", type=cli.int_range(2, 100), default=5, help="timed training steps (first: warm-up)")
    parser.add_argument(
        "--amp_rtol",
        type=cli.float_range(0, 1),
        default=0.02,
        help="largest relative difference of the first AMP loss from the fp32 one",
    )
    parser.add_argument("--infer_images", type=cli.positive_int, default=16, help="images for infer_cls_ser")
    parser.add_argument("--rw_grids", nargs="+", default=["47x63", "94x125"], help="random-walk grids HxW")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a dry run: batch 2, crop 72, 2 images")
    add_results_flag(parser, SECTION, RESULTS)
    parser.add_argument("--work_dir", help="scratch folder (default: a temporary one)")
    return parser


# --------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def cls_batch(batch: int, crop: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(batch, NUM_FG_CLASSES, generator=g) < 0.15).float()
    labels[torch.arange(batch), torch.randint(NUM_FG_CLASSES, (batch,), generator=g)] = 1  # at least one class
    return torch.randn(batch, 3, crop, crop, generator=g), labels


def aff_batch(model, batch: int, crop: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, crop, crop, generator=g)
    with torch.no_grad():
        shape = model(images[:1]).shape[1:]  # (34, n_from)
    kinds = torch.randint(3, (batch, *shape), generator=g)
    return images, *((kinds == k).float() for k in range(3))


# --------------------------------------------------------------------------- 1. training steps


def train_steps(stage: str, args, device: torch.device, amp: bool) -> dict:
    """``--steps`` optimiser steps from a fixed init on fixed random inputs: losses, peak memory, images/s."""
    torch.manual_seed(0)
    module = resnet38_cls_ser if stage == "cls" else resnet38_aff
    model = module.Net(width_mult=args.width_mult)
    batch = args.batch_cls if stage == "cls" else args.batch_aff
    inputs = cls_batch(batch, args.crop, 1) if stage == "cls" else aff_batch(model, batch, args.crop, 1)
    model.to(device).train()
    inputs = [t.to(device) for t in inputs]
    optimizer = torchutils.make_optimizer(model, 0.01, 5e-4, args.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    reset_peak(device)
    losses, seconds = [], []
    for _ in range(args.steps):
        sync(device)
        t0 = time.perf_counter()
        with torchutils.autocast(device, amp):
            if stage == "cls":
                loss, _ = resnet38_cls_ser.ssenet_loss(model, inputs[0], inputs[1])
            else:
                loss, _ = resnet38_aff.affinity_loss(model(inputs[0]).float(), *inputs[1:])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        sync(device)
        seconds.append(time.perf_counter() - t0)
    timed = seconds[1:]  # the first step includes cuDNN autotuning and allocator warm-up
    return {
        "stage": stage,
        "amp": amp,
        "batch": batch,
        "crop": args.crop,
        "losses": losses,
        "finite": all(np.isfinite(losses)),
        "peak_mib": peak_memory_mib(device),
        "images_per_s": batch * len(timed) / sum(timed),
    }


# --------------------------------------------------------------------------- 2. DDP under torchrun


def toy_voc(work: Path, num_train: int, size: int) -> tuple[Path, Path]:
    root = work / "VOC2012"
    if not root.exists():
        make_toy_voc(root, num_train=num_train, num_val=1, size=size, seed=0)
    return root, root / "ImageSets" / "Segmentation" / "train.txt"


def ddp_world_size_1(args, work: Path) -> dict:
    root, train_list = toy_voc(work / "ddp", 4, 96)
    session = work / "ddp" / "sess"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        str(REPO / "train_cls_ser.py"),
        "--train_list",
        str(train_list),
        "--val_list",
        "",
        "--voc12_root",
        str(root),
        "--cls_labels",
        str(work / "ddp" / "cls_labels.npz"),
        "--from_scratch",
        "--bn_calib_batches",
        "1",
        "--width_mult",
        str(args.width_mult),
        "--crop_size",
        "64",
        "--resize_long",
        "64",
        "96",
        "--batch_size",
        "2",
        "--max_epoches",
        "1",
        "--max_steps",
        "2",
        "--num_workers",
        "0",
        "--tblog_dir",
        "",
        "--session_name",
        str(session),
        "--device",
        str(args.device),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    result = {"returncode": proc.returncode, "seconds": seconds}
    checkpoint = Path(f"{session}_checkpoint.pth")
    if proc.returncode == 0 and checkpoint.is_file():
        result["step"] = torchutils.load_checkpoint(checkpoint)["step"]
        log = Path(f"{session}.log").read_text()
        result["world_size_1"] = "world size 1" in log
    else:
        result["tail"] = (proc.stdout + proc.stderr)[-2000:]
    result["backend"] = "nccl" if torch.cuda.is_available() else "gloo"
    return result


# --------------------------------------------------------------------------- 3. DataParallel


def data_parallel(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = resnet38_cls_ser.Net(width_mult=args.width_mult).to(device).train()
    images, labels = (t.to(device) for t in cls_batch(2, min(args.crop, 256), 2))
    wrapped = torch.nn.DataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    losses = []
    for net in (model, wrapped):
        torch.manual_seed(1)  # the same dropout masks
        loss, _ = resnet38_cls_ser.ssenet_loss(net, images, labels)
        loss.backward()
        losses.append(loss.item())
    return {"plain": losses[0], "data_parallel": losses[1], "abs_diff": abs(losses[0] - losses[1])}


# --------------------------------------------------------------------------- 4. CAM inference speed


def infer_speed(args, work: Path) -> dict:
    root, train_list = toy_voc(work / "infer", args.infer_images, 64)
    rng = np.random.default_rng(0)
    for image_id in load_img_id_list(train_list):  # VOC-sized random images replace the toy ones
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(jpeg_path(root, image_id))
    torch.manual_seed(0)
    weights = work / "infer" / "cls.pth"
    torch.save(resnet38_cls_ser.Net(width_mult=args.width_mult).state_dict(), weights)
    argv = [
        "--weights",
        str(weights),
        "--width_mult",
        str(args.width_mult),
        "--infer_list",
        str(train_list),
        "--voc12_root",
        str(root),
        "--cls_labels",
        str(work / "infer" / "cls_labels.npz"),
        "--out_cam",
        str(work / "infer" / "out_cam"),
        "--num_workers",
        "2",
        "--device",
        str(args.device),
        "--overwrite",
    ]
    if args.quick:
        argv += ["--scales", "1.0"]
    summary = infer_cls_ser.main(infer_cls_ser.get_args_parser().parse_args(argv))
    return {
        "images": summary["done"],
        "seconds": summary["seconds"],
        "images_per_s": summary["done"] / summary["seconds"],
    }


# --------------------------------------------------------------------------- 5. random walk


def random_walks(args, device: torch.device) -> list[dict]:
    rows = []
    for text in args.rw_grids:
        h, w = parse_grid(text)
        aff, cams = (torch.from_numpy(x).to(device) for x in make_inputs(h, w, 21, "scene", 0))
        out, seconds = {}, {}
        for mode in ("sparse", "dense"):
            propagate(aff, cams, (h, w), mode=mode)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            out[mode] = propagate(aff, cams, (h, w), mode=mode)
            sync(device)
            seconds[mode] = time.perf_counter() - t0
        diff = (out["sparse"] - out["dense"]).abs().max().item()
        rows.append({"grid": text, "sparse_s": seconds["sparse"], "dense_s": seconds["dense"], "max_abs_diff": diff})
    return rows


# --------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"{cpu_model()}, {cli.usable_cpus()} CPUs (CPU dry run, not a GPU result)"


def report(results: dict, args) -> str:
    lines = [
        f"Device: {results['device']}; torch {torch.__version__}; {results['date']}; width {args.width_mult}; "
        f"`bash bench/gpu_check.sh {' '.join(results['argv'])}`.",
        "",
        "| stage | precision | batch x crop | loss (step 1 .. last) | finite | peak MiB | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["train"]:
        if row.get("skipped"):
            lines.append(f"| {row['stage']} | AMP | | skipped: {row['skipped']} | | | |")
            continue
        losses = f"{row['losses'][0]:.4f} .. {row['losses'][-1]:.4f}"
        lines.append(
            f"| {row['stage']} | {'AMP' if row['amp'] else 'fp32'} | {row['batch']} x {row['crop']} | {losses} | "
            f"{'yes' if row['finite'] else 'NO'} | {row['peak_mib']:.0f} | {row['images_per_s']:.1f} |"
        )
    for stage, diff in results["amp_rel_diff"].items():
        verdict = "within" if diff <= args.amp_rtol else "OUTSIDE"
        lines.append(
            f"\nAMP vs fp32, {stage}: first-step loss differs by {diff:.2e} relative ({verdict} {args.amp_rtol})."
        )
    ddp = results["ddp"]
    lines.append(
        f"\nDDP (torchrun, world size 1, {ddp['backend']}): exit code {ddp['returncode']}, "
        f"{'step ' + str(ddp.get('step')) if 'step' in ddp else 'no checkpoint'}, {ddp['seconds']:.1f} s."
    )
    dp = results["data_parallel"]
    lines.append(f"DataParallel on one device: loss {dp['data_parallel']:.6f} vs plain {dp['plain']:.6f}.")
    inf = results["infer"]
    lines.append(
        f"infer_cls_ser.py (CAMs only, no CRF, 500x375 random images): {inf['images']} images in "
        f"{inf['seconds']:.1f} s, {inf['images_per_s']:.2f} images/s (model load included)."
    )
    lines += ["", "| random-walk grid | sparse s | dense s | max abs diff |", "|---|---|---|---|"]
    for row in results["random_walk"]:
        lines.append(f"| {row['grid']} | {row['sparse_s']:.3f} | {row['dense_s']:.3f} | {row['max_abs_diff']:.1e} |")
    lines.append(f"\nVerdict: {'PASS' if results['ok'] else 'FAIL'} ({results['seconds']:.0f} s in all).")
    return "\n".join(lines)


def main(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    start = time.perf_counter()
    device = torchutils.get_device(args.device)
    if args.quick:
        args.batch_cls, args.batch_aff, args.crop, args.steps, args.infer_images = 2, 2, 72, 2, 2
        args.rw_grids = ["12x16"]
    work_holder = None
    if args.work_dir is None:
        work_holder = tempfile.TemporaryDirectory(prefix="gpu_check_")
        work = Path(work_holder.name)
    else:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    results = {
        "device": device_name(device),
        "date": datetime.date.today().isoformat(),
        "argv": argv or [],
        "train": [],
        "amp_rel_diff": {},
    }
    for stage in ("cls", "aff"):
        fp32 = train_steps(stage, args, device, amp=False)
        results["train"].append(fp32)
        if device.type != "cuda":
            results["train"].append({"stage": stage, "skipped": "autocast is CUDA-only"})
            continue
        amp = train_steps(stage, args, device, amp=True)
        results["train"].append(amp)
        results["amp_rel_diff"][stage] = abs(amp["losses"][0] - fp32["losses"][0]) / abs(fp32["losses"][0])
    results["ddp"] = ddp_world_size_1(args, work)
    results["data_parallel"] = data_parallel(args, device)
    results["infer"] = infer_speed(args, work)
    results["random_walk"] = random_walks(args, device)
    results["seconds"] = time.perf_counter() - start
    results["ok"] = (
        all(row.get("finite", True) for row in results["train"])
        and all(diff <= args.amp_rtol for diff in results["amp_rel_diff"].values())
        and results["ddp"]["returncode"] == 0
        and results["ddp"].get("step") == 2
        and results["data_parallel"]["abs_diff"] <= 1e-4 * max(1.0, abs(results["data_parallel"]["plain"]))
        and results["infer"]["images"] == args.infer_images
        and all(row["max_abs_diff"] < 1e-3 for row in results["random_walk"])
    )
    text = report(results, args)
    print(text)
    record(args.results, SECTION, text)
    print(json.dumps({k: v for k, v in results.items() if k != "argv"}, default=str))
    if work_holder is not None:
        work_holder.cleanup()
    return results


if __name__ == "__main__":
    cli_argv = sys.argv[1:]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    outcome = cli.run(lambda a: main(a, cli_argv), get_args_parser(), cli_argv)
    sys.exit(0 if outcome["ok"] else 1)
