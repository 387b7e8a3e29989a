"""SSENet CAM inference: multi-scale flipped CAMs, CAM predictions, CRF scores (docs/method.md#ssenet-inference).

    python infer_cls_ser.py --weights resnet38_cls_ser.pth --infer_list voc12/train.txt --voc12_root VOC2012 \
        --out_cam out_cam --out_crf out_crf --out_cam_pred out_cam_pred
    torchrun --nproc_per_node 4 infer_cls_ser.py ...   # the list is split across ranks

Per image, the original and its horizontal flip at every scale go through the
network as one batch of two; each CAM is rectified, resized to the image,
restricted to the image's classes and un-flipped, the eight maps are summed
and each class is divided by its spatial maximum (:func:`infer_cams`).

Outputs, one file per image and kind, each written atomically:

- ``--out_cam``: ``<id>.npz``, keys = 0-based indices of the present classes,
  scores = their normalised CAMs (K, H, W);
- ``--out_cam_pred``: ``<id>.png``, palette PNG of argmax over
  [``--bg_score``, one normalised CAM per foreground class] (0 = background, k + 1 = class k);
- ``--out_crf``: ``<out_crf>_<alpha>/<id>.npz`` for each ``--crf_alphas``,
  keys 0 (background) and k + 1, scores = dense-CRF marginals;
- ``--out_vis``: ``<id>.png``, the image beside one CAM overlay per present class.

The dense CRF runs on CPU in ``--crf_workers`` processes while the network
computes the next images; the workers write the CRF files themselves. On a
CPU device the network gives up one torch thread per CRF worker, because an
oversubscribed OpenMP pool spins (measured 10x slower on 2 cores). An image
whose requested outputs all exist is skipped (``--overwrite`` redoes it). A
killed run can leave hidden ``.<id>.*.tmp.*`` files in the output folders,
never a partial ``<id>.npz``/``<id>.png``; the next run deletes the leftovers
of the images it recomputes.
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engine import flags, inference
from engine.script import ScriptEnv, script_context
from tool import autothreshold, cli, layout, torchutils
from tool.camutils import BG_SCORE, max_norm
from tool.crf import crf_scores_with_alpha
from tool.dataset import color_map
from tool.fileio import SCORE_DTYPES, atomic_path, save_png, save_scores
from tool.visualization import cam_overlay
from voc12.data import MSF_SCALES, VOC12ClsDatasetMSF, VOC12ImageDatasetMSF

logger = logging.getLogger(__name__)

CRF_ALPHAS = (4.0, 24.0)
CLS_THRESHOLD = 0.5  # --cls_threshold: on the sigmoid of the image-level score


# --------------------------------------------------------------------------- the method


def _cam_sum(
    model: torch.nn.Module,
    inputs: list[torch.Tensor],
    classes: torch.Tensor | None,
    size: tuple[int, int],
    device: torch.device,
    amp: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum over scales and flips of the rectified CAMs of ``classes`` (None: all) at the image ``size``,
    (K, H, W), and the mean over those outputs of each class's spatial mean score (its image-level score), (C,)."""
    height, width = size
    cam_sum, score_sum, count = None, None, 0
    for cam in inference.msf_outputs(model, inputs, device, amp):  # (2, C, h_s, w_s)
        cam = cam.float()
        score_sum = cam.mean(dim=(2, 3)).sum(0) + (0 if score_sum is None else score_sum)
        count += len(cam)
        if classes is not None:
            # Absent classes are zeroed anyway: dropping them before the resize saves its work (it is per channel).
            cam = cam.index_select(1, classes)
        cam = F.interpolate(F.relu(cam), size=(height, width), mode="bilinear", align_corners=False)
        cam_sum = inference.unflip_sum(cam) + (0 if cam_sum is None else cam_sum)
    return cam_sum, score_sum / count


@torch.inference_mode()
def infer_cams(
    model: torch.nn.Module,
    inputs: list[torch.Tensor],
    label: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    device: torch.device,
    amp: bool = False,
) -> np.ndarray:
    """Multi-scale, flip-averaged, max-normalised CAMs of one image: (C, H, W) float32 in [0, 1].

    ``inputs`` holds one (2, 3, h_s, w_s) tensor per scale (the scaled image and
    its horizontal flip), ``label`` the (C,) image-level label and ``size`` the
    original (H, W). Absent classes are 0.
    """
    label = torch.as_tensor(label)
    present = torch.nonzero(label > 0).flatten()
    norm_cam = torch.zeros((label.numel(), *size))
    if present.numel() > 0:
        cam_sum, _ = _cam_sum(model, inputs, present.to(device), size, device, amp)
        norm_cam[present] = max_norm(cam_sum).cpu()
    return norm_cam.numpy()


@torch.inference_mode()
def predict_and_infer_cams(
    model: torch.nn.Module,
    inputs: list[torch.Tensor],
    size: tuple[int, int],
    device: torch.device,
    cls_threshold: float = CLS_THRESHOLD,
    amp: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an image without a label (``--label_source predicted``): the label the classifier predicts,
    ``sigmoid(image-level score) > cls_threshold`` (the score averaged over scales and flips), and the CAMs of
    those classes exactly as :func:`infer_cams` computes them for that label. Returns
    ``(label (C,) float32, norm_cam (C, H, W), probabilities (C,))``."""
    cam_sum, scores = _cam_sum(model, inputs, None, size, device, amp)
    probs = torch.sigmoid(scores).cpu()
    label = (probs > cls_threshold).float()
    present = torch.nonzero(label > 0).flatten()
    norm_cam = torch.zeros((label.numel(), *size))
    if present.numel() > 0:
        norm_cam[present] = max_norm(cam_sum[present.to(cam_sum.device)]).cpu()
    return label.numpy(), norm_cam.numpy(), probs.numpy()


def cam_prediction(norm_cam: np.ndarray, bg_score: float = BG_SCORE) -> np.ndarray:
    """(H, W) uint8 label map: argmax over [constant background score, 20 CAMs] (ties go to background)."""
    background = np.full((1, *norm_cam.shape[1:]), bg_score, dtype=norm_cam.dtype)
    return np.concatenate([background, norm_cam]).argmax(axis=0).astype(np.uint8)


def cam_visualization(image: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 image beside one overlay per map of ``cams`` (K, H, W): (H, (K + 1) W, 3) uint8."""
    return np.concatenate([image, *(cam_overlay(image, cam) for cam in cams)], axis=1)


def write_crf(
    path: Path, image: np.ndarray, keys: np.ndarray, cams: np.ndarray, alpha: float, score_dtype: str
) -> None:
    """CRF scores of one image for one alpha, written to ``path`` (runs in a worker process)."""
    crf_keys, scores = crf_scores_with_alpha(image, keys, cams, alpha)
    save_scores(path, crf_keys, scores, score_dtype, kind="crf")


def _save_rgb_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


# --------------------------------------------------------------------------- CRF worker pool


class CrfPool:
    """Runs :func:`write_crf` jobs in worker processes, with at most ``max_pending`` queued or running.

    The bound keeps memory flat when the network outpaces the CRF: ``submit``
    blocks until a job finishes. ``workers = 0`` runs each job in line.
    A failed job re-raises in the main process at the next ``submit`` or ``close``.
    """

    def __init__(self, workers: int, max_pending: int | None = None) -> None:
        self.executor = None
        self.workers = workers
        self.pending: dict[Future, Path] = {}
        self.max_pending = max_pending or 2 * workers + 2
        if workers > 0:
            # fork is cheap (no re-import of torch) and safe: the workers start here, before the network and the
            # data loader run threads, and they never touch torch or CUDA. Other platforms get spawn.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            # A worker ends with this process, even when it is killed (SIGKILL): no orphaned ~400 MB CRF processes.
            self.executor = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context(method),
                initializer=cli.die_with_parent,
                initargs=(os.getpid(),),
            )
            self.executor.submit(int).result()  # with fork, every worker starts at the first submit: now

    def submit(self, path: Path, *job) -> None:
        if self.executor is None:
            write_crf(path, *job)
            return
        while len(self.pending) >= self.max_pending:
            self._collect(wait(self.pending, return_when=FIRST_COMPLETED).done)
        self.pending[self.executor.submit(write_crf, path, *job)] = path

    def _collect(self, futures) -> None:
        for future in futures:
            path = self.pending.pop(future)
            try:
                future.result()
            except Exception as e:
                raise RuntimeError(f"CRF worker failed writing {path}: {e}") from e

    def close(self) -> None:
        """Wait for every job; raise the first failure."""
        self._collect(wait(self.pending).done)

    def __enter__(self) -> CrfPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.executor is not None:
            # On an error, drop queued jobs; running ones finish their file (or remove their temp file).
            self.executor.shutdown(wait=True, cancel_futures=exc_type is not None)


# --------------------------------------------------------------------------- main


def write_outputs(
    paths: dict[str, Path],
    image: np.ndarray,
    label: np.ndarray,
    norm_cam: np.ndarray,
    crf_pool: CrfPool,
    crf_alphas: list[float],
    score_dtype: str = "float16",
    bg_score: float = BG_SCORE,
    palette: np.ndarray | None = None,
) -> None:
    """Every file of ``paths`` (:func:`tool.layout.cam_stage_paths`) for one (H, W, 3) uint8 ``image`` with its
    (C,) ``label``; the CRF ones are queued to the worker pool first so they overlap."""
    keys = np.flatnonzero(label > 0)
    cams = norm_cam[keys]  # (K, H, W), present classes only
    for alpha in crf_alphas:
        if layout.crf_kind(alpha) in paths:
            crf_pool.submit(paths[layout.crf_kind(alpha)], image, keys, cams, alpha, score_dtype)
    if "cam" in paths:
        save_scores(paths["cam"], keys, cams, score_dtype, kind="cam")
    if "cam_pred" in paths:
        save_png(paths["cam_pred"], cam_prediction(norm_cam, bg_score), color_map() if palette is None else palette)
    if "vis" in paths:
        _save_rgb_png(paths["vis"], cam_visualization(image, cams))


def _image_cams(args: argparse.Namespace, model, item: dict, device, class_names) -> tuple[np.ndarray, np.ndarray]:
    """The (C,) label and (C, H, W) CAMs of one loader item: its given label or, with ``--label_source predicted``,
    the classifier's (logged)."""
    size = tuple(item["image"].shape[:2])
    if args.label_source == "given":
        label = item["label"].numpy()
        return label, infer_cams(model, item["inputs"], label, size, device, args.amp)
    label, norm_cam, probs = predict_and_infer_cams(model, item["inputs"], size, device, args.cls_threshold, args.amp)
    found = ", ".join(f"{class_names[k]} {probs[k]:.2f}" for k in np.flatnonzero(label)) or "none"
    logger.info("%s: predicted classes (sigmoid > %g): %s", item["id"], args.cls_threshold, found)
    return label, norm_cam


def _dataset(args: argparse.Namespace, info, ids: list[str], normalize) -> VOC12ImageDatasetMSF:
    """The multi-scale inputs of the list, with their given labels unless ``--label_source predicted``."""
    if args.label_source == "predicted":
        return VOC12ImageDatasetMSF(args.infer_list, info, args.scales, normalize=normalize)
    labels = info.load_labels(ids, args.cls_labels)
    return VOC12ClsDatasetMSF(args.infer_list, info, labels, args.scales, normalize=normalize)


def run_images(args: argparse.Namespace, info, ids: list[str], todo: list[int], env: ScriptEnv, paths_of) -> int:
    """CAMs and outputs of ``ids[i]`` for ``i`` in ``todo`` (images of dataset ``info``); returns how many were
    processed."""
    device = env.device
    threads = torch.get_num_threads()
    with CrfPool(args.crf_workers if args.out_crf else 0) as crf_pool:
        model = inference.load_model(
            args.network, args.width_mult, args.weights, device, info.num_fg_classes, head="cam"
        )
        msf = _dataset(args, info, ids, model.normalize)
        # batch_size=None: items arrive one by one, uncollated (their scales have different sizes).
        loader = DataLoader(
            Subset(msf, todo), batch_size=None, num_workers=args.num_workers, pin_memory=device.type == "cuda"
        )
        if device.type == "cpu" and crf_pool.workers:
            # The CRF processes take CPUs from the network, and an oversubscribed OpenMP pool spins: give them up.
            torch.set_num_threads(max(1, threads - crf_pool.workers))
        done = 0
        try:
            with logging_redirect_tqdm():
                for item in tqdm(loader, desc="CAM inference", disable=not env.is_main):
                    label, norm_cam = _image_cams(args, model, item, device, info.class_names)
                    out = (args.crf_alphas, args.score_dtype, args.bg_score, info.palette)
                    write_outputs(paths_of(item["id"]), item["image"].numpy(), label, norm_cam, crf_pool, *out)
                    done += 1
            crf_pool.close()
        finally:
            torch.set_num_threads(threads)
    return done


# --------------------------------------------------------------------------- command line


def default_crf_workers() -> int:
    """One CPU of this rank's share is left for the network and the data loader."""
    cpus = cli.usable_cpus()
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, cpus // ranks_here - 1)


def add_crf_alphas_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--crf_alphas",
        type=cli.or_auto(cli.float_range(0, 1000, lo_open=True)),
        nargs="+",
        default=list(CRF_ALPHAS),
        help="background powers of the CRF scores in (0, 1000], bg = (1 - max cam) ** alpha (reference: 4 24); "
        "auto: the low / high pair from the background score (docs/method.md#automatic-thresholds)",
    )


def crf_alphas_of(flags: list[str]) -> list[float]:
    """The ``--crf_alphas`` a command line of this script resolves to (default :data:`CRF_ALPHAS`)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_crf_alphas_arg(parser)
    return parser.parse_known_args(flags)[0].crf_alphas


def get_args_parser() -> argparse.ArgumentParser:
    parser = flags.ArgumentParser(
        description="SSENet CAM inference: CAMs, CAM predictions, CRF scores", script="infer_cls_ser"
    )
    flags.add_weights_flag(parser, "trained SSENet state dict (.pth)")
    flags.add_network_flags(parser, "network.resnet38_cls_ser")
    flags.add_data_flags(parser, "--infer_list")
    flags.add_cls_labels_flag(parser)
    parser.add_argument(
        "--label_source",
        choices=("given", "predicted"),
        default="given",
        help="image-level labels: given (the dataset's label file, as published) or predicted by the classifier "
        "(images without labels: sigmoid of the image-level score > --cls_threshold, logged per image)",
    )
    parser.add_argument(
        "--cls_threshold",
        type=cli.float_range(0, 1, lo_open=True, hi_open=True),
        default=CLS_THRESHOLD,
        help=f"with --label_source predicted: a class is present when its sigmoid score exceeds this, in (0, 1) "
        f"(default {CLS_THRESHOLD})",
    )
    flags.add_num_workers_flag(parser, 8, "DataLoader worker processes per rank (at most the CPUs)")
    flags.add_scales_flag(parser, MSF_SCALES, "each run with its horizontal flip (reference: 1.0 0.5 1.5 2.0)")
    parser.add_argument("--out_cam", help="folder for <id>.npz normalised CAMs of present classes")
    parser.add_argument("--out_cam_pred", help="folder for <id>.png CAM argmax predictions")
    parser.add_argument(
        "--out_crf", help="folder prefix for CRF scores: <out_crf>_<alpha>/<id>.npz, one folder per --crf_alphas value"
    )
    parser.add_argument("--out_vis", help="folder for <id>.png CAM overlays (image + classes)")
    parser.add_argument(
        "--bg_score",
        type=cli.or_auto(cli.unit_float),
        default=BG_SCORE,
        help="constant background score of --out_cam_pred in [0, 1], against CAMs in [0, 1] (reference: 0.2); "
        "auto: computed from the CAMs of the list, written to <out_cam>/bg_score.json (needs --out_cam; "
        "docs/method.md#automatic-thresholds)",
    )
    add_crf_alphas_arg(parser)
    parser.add_argument(
        "--crf_workers",
        type=cli.worker_count,
        default=default_crf_workers(),
        help="processes running the dense CRF beside the network; 0 runs it in line; on a CPU device the network "
        "keeps the other torch threads (default: CPUs per rank - 1)",
    )
    parser.add_argument(
        "--score_dtype", choices=sorted(SCORE_DTYPES), default="float16", help="dtype of the stored CAM and CRF scores"
    )
    flags.add_overwrite_flag(parser)
    flags.add_device_flags(parser)
    return parser


def cam_stage(args: argparse.Namespace, info, finish=None) -> dict:
    """One pass of the stage over the list, writing the outputs ``args`` asks for."""
    outputs = {"out_cam": args.out_cam, "out_cam_pred": args.out_cam_pred, "out_vis": args.out_vis}
    paths_of = functools.partial(layout.cam_stage_paths, out_crf=args.out_crf, crf_alphas=args.crf_alphas, **outputs)
    out_dirs = [(f"--{flag}", folder) for flag, folder in outputs.items() if folder]
    out_dirs += [("--out_crf", layout.crf_dir(args.out_crf, a)) for a in (args.crf_alphas if args.out_crf else ())]
    return inference.run_stage(
        args,
        "CAM inference",
        out_dirs,
        paths_of,
        lambda ids, todo, env: run_images(args, info, ids, todo, env, paths_of),
        finish,
    )


def resolve_auto(args: argparse.Namespace, info) -> dict:
    """``--bg_score auto`` / ``--crf_alphas auto``: a first pass writes the CAMs, the rule reads them
    (:mod:`tool.autothreshold`), ``args`` gets the values, ``<out_cam>/bg_score.json`` records them."""
    auto_bg = args.bg_score == autothreshold.AUTO
    if auto_bg:

        def choose(ids: list[str], env: ScriptEnv) -> dict:
            value, stats = autothreshold.bg_score_from_cam_files(args.out_cam, ids, info.num_fg_classes)
            return {"bg_score": value, "statistics": stats}

        only_cams = {"out_cam_pred": None, "out_crf": None, "out_vis": None, "crf_alphas": []}
        first = argparse.Namespace(**{**vars(args), **only_cams})
        chosen = cam_stage(first, info, choose)
        args.bg_score, stats = chosen["bg_score"], chosen["statistics"]
    else:
        stats = {}
    if args.crf_alphas == [autothreshold.AUTO]:
        args.crf_alphas = autothreshold.crf_alphas_for(args.bg_score)
    record = {"bg_score": args.bg_score, "crf_alphas": args.crf_alphas, "auto_bg_score": auto_bg}
    logger.info("automatic choice: background score %g, CRF alphas %s", args.bg_score, args.crf_alphas)
    if args.out_cam and torchutils.is_main_process():
        autothreshold.write_record(args.out_cam, args.bg_score, stats, crf_alphas=args.crf_alphas, auto=auto_bg)
    return record


def main(args: argparse.Namespace) -> dict:
    if not (args.out_cam or args.out_cam_pred or args.out_crf or args.out_vis):
        raise SystemExit("nothing to write: give at least one of --out_cam, --out_cam_pred, --out_crf, --out_vis")
    if args.out_crf and not args.crf_alphas:
        raise SystemExit("--out_crf needs at least one --crf_alphas value")
    if autothreshold.AUTO in args.crf_alphas and args.crf_alphas != [autothreshold.AUTO]:
        raise SystemExit("--crf_alphas: 'auto' stands alone (it chooses the low and the high alpha)")
    if args.bg_score == autothreshold.AUTO and not args.out_cam:
        raise SystemExit("--bg_score auto needs --out_cam: the rule reads the CAM files of the list")
    info = flags.dataset_of(args)  # a folder of another dataset is refused before any work
    if args.bg_score == autothreshold.AUTO or args.crf_alphas == [autothreshold.AUTO]:
        with script_context(args):  # one process group for both passes
            record = resolve_auto(args, info)
            return {**cam_stage(args, info), **record}
    return cam_stage(args, info)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
