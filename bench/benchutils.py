"""What the benchmarks share: naming the machine and recording a section of RESULTS.md (``--results``)."""

from __future__ import annotations

import argparse
import contextlib
import platform
import re
import resource
import subprocess
import time
from pathlib import Path

from tool.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def write_section(path: Path, heading: str, text: str) -> None:
    """Add or replace the ``heading`` section of a markdown file, leaving the other sections alone.

    The file is re-read just before writing, because other benchmarks write their own sections.
    """
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    section = f"{heading}\n\n{text.strip()}\n\n"
    new = pattern.sub(lambda _: section, old, count=1) if pattern.search(old) else f"{old.rstrip()}\n\n{section}"
    atomic_write_text(path, new.rstrip() + "\n")


def add_results_flag(parser: argparse.ArgumentParser, section: str, default: Path | None = None) -> None:
    """``--results PATH``, the one flag every benchmark records with: the markdown file whose ``section`` it
    replaces (without it, and without a ``default``, the results are only printed)."""
    where = f"default: {default.relative_to(default.parents[1])}" if default else "default: print only"
    parser.add_argument(
        "--results",
        type=Path,
        default=default,
        help=f"markdown file whose '{section}' section the results replace ({where})",
    )


def record(results: Path | None, section: str, text: str) -> None:
    """Write ``text`` as ``section`` of ``results`` (:func:`write_section`) when a file is given."""
    if results is not None:
        write_section(results, section, text)
        print(f"wrote the '{section}' section of {results}")


def timed(repeats: int, *fns) -> list[tuple[float, float, object]]:
    """For each of ``fns``: best-of-``repeats`` wall seconds, the CPU seconds of that run (this
    process and its finished children, e.g. pool workers) and the result. The functions take
    turns, so a burst of load from other jobs hits them alike."""
    best: list = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            cpu_start, children_start = time.process_time(), _children_cpu()
            start = time.perf_counter()
            out = fn()
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_start + _children_cpu() - children_start
            if best[i] is None or wall < best[i][0]:
                best[i] = (wall, cpu, out)
    return best


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
