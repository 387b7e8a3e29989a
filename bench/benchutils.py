"""What the benchmarks share: naming the machine and recording a section of RESULTS.md."""

from __future__ import annotations

import contextlib
import platform
import re
import subprocess
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
