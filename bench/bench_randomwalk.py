"""Benchmark of the random walk (docs/method.md#random-walk): the reference dense algorithm against ours.

The reference builds the dense N x N transition matrix T and squares it logt
times; ``tool.randomwalk.propagate`` (sparse mode) multiplies by a sparse T
2^logt times. Every (method, grid) case runs in a fresh subprocess so that its
peak resident memory (``ru_maxrss``; tracemalloc does not see torch) is its own.
Both outputs are compared with each other and with a float64 ground truth
computed here with scipy (2^logt sparse products, independent of our code).

    python -m bench.bench_randomwalk                       # 47x63 and 94x125, a few minutes on 2 cores
    python -m bench.bench_randomwalk --quick               # small grids, seconds
    python -m bench.bench_randomwalk --results bench/RESULTS.md
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
import scipy.sparse
import torch

from bench.benchutils import add_results_flag, cpu_model, record
from tool.randomwalk import pair_indices, propagate

SECTION = "## Random walk"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Random walk: dense reference vs sparse propagation", add_help=True)
    parser.add_argument(
        "--grids",
        nargs="+",
        default=["47x63", "94x125"],
        help="feature grids HxW (47x63: a 500x375 VOC image; 94x125: 1000x752)",
    )
    parser.add_argument("--quick", action="store_true", help="small grids (24x32, 47x63), 2 sparse runs, 1 dense run")
    parser.add_argument("--channels", type=int, default=21, help="score channels (VOC: background + 20)")
    parser.add_argument("--beta", type=float, default=8, help="affinity exponent (reference: 8)")
    parser.add_argument("--logt", type=int, default=8, help="log2 of the number of steps (reference: 8)")
    parser.add_argument(
        "--inputs",
        choices=["scene", "random"],
        default="scene",
        help="scene: objects with AffinityNet-like affinities; random: uniform ones",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the sparse walk (minimum reported)")
    parser.add_argument("--dense_repeats", type=int, default=1, help="timed runs of the dense reference")
    parser.add_argument("--device", default="cpu", help="torch device for both methods")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per case (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    add_results_flag(parser, SECTION)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker_inputs", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    return parser


def parse_grid(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--grids: expected HxW such as 47x63, got {text!r}") from None
    return h, w


def make_inputs(h: int, w: int, channels: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair affinities (34, n_from) and scores (channels, h, w), float32."""
    rng = np.random.default_rng([seed, h, w])
    idx_from, idx_to = pair_indices(h, w)
    if kind == "random":
        aff = 1.0 - rng.random((34, idx_from.size))
        return aff.astype(np.float32), rng.random((channels, h, w)).astype(np.float32)
    # A background and three elliptic objects of random classes; affinities exp(-mean |f_i - f_j|) of noisy
    # one-hot features, as AffinityNet's head computes them; CAMs noisy on their objects, background 0.2.
    yy, xx = np.mgrid[0:h, 0:w]
    label = np.zeros((h, w), np.int64)
    for cls in rng.choice(np.arange(1, channels), size=3, replace=False):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.15, 0.35) * h, rng.uniform(0.15, 0.35) * w
        label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = cls
    features = 3.0 * np.eye(channels)[label.reshape(-1)] + 0.2 * rng.standard_normal((h * w, channels))
    aff = np.exp(-np.abs(features[idx_from][None] - features[idx_to]).mean(-1))
    cams = np.zeros((channels, h, w))
    cams[0] = 0.2
    for cls in np.unique(label[label > 0]):
        cams[cls] = np.clip((label == cls) * rng.uniform(0.3, 1.0, (h, w)) + 0.1 * rng.standard_normal((h, w)), 0, 1)
    return aff.astype(np.float32), cams.astype(np.float32)


def ground_truth(aff: np.ndarray, cams: np.ndarray, beta: float, logt: int) -> np.ndarray:
    """v T^(2^logt) in float64 by 2^logt scipy sparse products (docs/method.md#random-walk, written independently)."""
    c, h, w = cams.shape
    idx_from, idx_to = pair_indices(h, w)
    pix_from = np.broadcast_to(idx_from, idx_to.shape).reshape(-1)
    values = aff.astype(np.float64).reshape(-1) ** beta
    rows = np.concatenate([pix_from, idx_to.reshape(-1), np.arange(h * w)])
    cols = np.concatenate([idx_to.reshape(-1), pix_from, np.arange(h * w)])
    affinity = scipy.sparse.csr_array((np.concatenate([values, values, np.ones(h * w)]), (rows, cols)))
    column_sums = np.asarray(affinity.sum(axis=0)).reshape(-1)
    transition_t = (affinity / column_sums[None, :]).T.tocsr()  # T^T, so that (v T)^T = T^T v^T
    scores = cams.reshape(c, h * w).astype(np.float64).T
    for _ in range(2**logt):
        scores = transition_t @ scores
    return scores.T.reshape(c, h, w)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def start_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) and return the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # no reset possible: the peak then also covers imports
        pass
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak RSS in MiB since the last ``start_peak_rss`` (or process start)."""
    try:
        return _status_mib("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_worker(args: argparse.Namespace) -> None:
    """One (method, grid) case; prints one JSON line and saves the output to ``args.save``."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with np.load(args.worker_inputs, allow_pickle=False) as inputs:
        aff_np, cams_np = inputs["aff"], inputs["cams"]
    device = torch.device(args.device)
    aff, cams = torch.from_numpy(aff_np).to(device), torch.from_numpy(cams_np).to(device)
    repeats = args.repeats if args.worker == "sparse" else args.dense_repeats
    # Load the kernels (MKL, sparse) once on a tiny grid so that neither time nor memory counts library start-up.
    tiny_aff, tiny_cams = (torch.from_numpy(a).to(device) for a in make_inputs(5, 9, args.channels, "random", 0))
    propagate(tiny_aff, tiny_cams, beta=args.beta, logt=args.logt, mode=args.worker)
    rss_before = start_peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        mem_before = torch.cuda.memory_allocated(device) / 2**20
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = propagate(aff, cams, beta=args.beta, logt=args.logt, mode=args.worker)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    report = {"times": times, "rss_peak_mib": peak_rss_mib(), "rss_before_mib": rss_before}
    if device.type == "cuda":
        report["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 - mem_before
    np.save(args.save, out.cpu().numpy())
    print(json.dumps(report))


def run_case(args: argparse.Namespace, method: str, inputs: Path, save: Path) -> dict:
    """Run one method in a fresh process on the arrays saved in ``inputs``; its output goes to ``save``."""
    command = [sys.executable, "-m", "bench.bench_randomwalk", "--worker", method]
    command += ["--worker_inputs", str(inputs), "--save", str(save)]
    for flag in ("channels", "beta", "logt", "repeats", "dense_repeats", "device", "threads"):
        command += [f"--{flag}", str(getattr(args, flag))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"{method} on {inputs.name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def extra_memory(report: dict) -> float:
    """MiB a case needed beyond its inputs: peak CUDA allocation, or peak RSS above the RSS before the runs."""
    if "cuda_peak_mib" in report:
        return report["cuda_peak_mib"]
    return report["rss_peak_mib"] - report["rss_before_mib"]


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |ours - ref| / max |ref|, fraction of pixels with the same argmax)."""
    error = float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())
    return error, float((ours.argmax(0) == ref.argmax(0)).mean())


def machine_line(args: argparse.Namespace) -> str:
    model = cpu_model()
    device = f"{args.device} ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else "cpu"
    threads = args.threads if args.threads > 0 else torch.get_num_threads()
    return (
        f"{model} ({os.cpu_count()} CPUs), {threads} torch threads, device {device}, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}, load average {os.getloadavg()[0]:.1f} at the end"
    )


def main(args: argparse.Namespace) -> None:
    if args.worker is not None:
        run_worker(args)
        return
    if args.quick:
        args.grids, args.repeats, args.dense_repeats = ["24x32", "47x63"], 2, 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for grid in args.grids:
            h, w = parse_grid(grid)
            aff, cams = make_inputs(h, w, args.channels, args.inputs, args.seed)
            truth = ground_truth(aff, cams, args.beta, args.logt)
            # The workers read the arrays from a file: generating them would leave freed temporaries resident.
            inputs = Path(tmp) / f"inputs_{grid}.npz"
            np.savez(inputs, aff=aff, cams=cams)
            results, outputs = {}, {}
            for method in ("dense", "sparse"):
                save = Path(tmp) / f"{method}_{grid}.npy"
                results[method] = run_case(args, method, inputs, save)
                outputs[method] = np.load(save, allow_pickle=False)
                print(f"{grid} {method}: {json.dumps(results[method])}", flush=True)
            dense_t, sparse_t = min(results["dense"]["times"]), min(results["sparse"]["times"])
            dense_mem, sparse_mem = (extra_memory(results[method]) for method in ("dense", "sparse"))
            err_sd, agree_sd = compare(outputs["sparse"], outputs["dense"])
            err_dt, agree_dt = compare(outputs["dense"], truth)
            err_st, agree_st = compare(outputs["sparse"], truth)
            rows.append(
                f"| {h}x{w} (N={h * w}) | {dense_t:.3g} s | {sparse_t:.3g} s | **{dense_t / sparse_t:.0f}x** "
                f"| {dense_mem:.0f} MiB | {sparse_mem:.1f} MiB | {100 * agree_sd:.3f}% "
                f"| {err_dt:.1e} / {100 * agree_dt:.3f}% | {err_st:.1e} / {100 * agree_st:.3f}% |"
            )
    memory_what = "peak CUDA allocation" if args.device.startswith("cuda") else "peak RSS above the inputs"
    header = (
        f"| grid | dense time | sparse time | speed-up | dense {memory_what} | sparse {memory_what} "
        "| same argmax (sparse vs dense) | dense vs float64: rel. error / same argmax "
        "| sparse vs float64: rel. error / same argmax |\n|---|---|---|---|---|---|---|---|---|"
    )
    body = (
        f"{SECTION}\n\n`python -m bench.bench_randomwalk {' '.join(sys.argv[1:])}`".rstrip()
        + f" on {machine_line(args)}.\n"
        f"C={args.channels} channels, beta={args.beta:g}, logt={args.logt} ({2**args.logt} steps), "
        f"'{args.inputs}' inputs (seed {args.seed}). Times: minimum of {args.dense_repeats} dense / "
        f"{args.repeats} sparse runs, each method in a fresh process. Dense = reference algorithm (float32 dense T "
        'squared logt times); sparse = `propagate(..., mode="sparse")`. Rel. error = max |x - ref| / max |ref| '
        "against a float64 scipy walk.\n\n" + header + "\n" + "\n".join(rows) + "\n"
    )
    print("\n" + body)
    record(args.results, SECTION, body.split("\n", 1)[1])


if __name__ == "__main__":
    main(get_args_parser().parse_args())
