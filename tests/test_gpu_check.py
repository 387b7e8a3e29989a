"""bench/gpu_check.sh as a CPU dry run at width 1/8: every part runs and its section names the device.

The GPU numbers themselves come from running the same command on a GPU (bench/RESULTS.md says where).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_cpu(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\nkept\n")
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--width_mult",
            "0.125",
            "--quick",
            "--results",
            str(results),
            "--work_dir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    assert "## Other section\n\nkept" in text  # only its own section is written
    section = text.split("## GPU check", 1)[1]
    assert "CPU dry run, not a GPU result" in section and "Device:" in section
    for part in (
        "| cls | fp32 | 2 x 72 |",
        "| aff | fp32 | 2 x 72 |",
        "DDP (torchrun, world size 1, gloo): exit code 0, step 2",
        "DataParallel on one device",
        "infer_cls_ser.py (CAMs only, no CRF",
        "| 12x16 |",
        "Verdict: PASS",
    ):
        assert part in section, part
