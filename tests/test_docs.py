"""The documentation stays true: the generated flag reference, the README's size and links, one run layout."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_README_LINES = 250
# Modules that describe a dataset's own layout (where its images, masks and lists are) rather than a run's.
DATASET_LAYOUT_MODULES = {
    "coco14/dataset.py",
    "coco14/prepare.py",
    "folder/dataset.py",
    "folder/make_toy_folder.py",
    "voc12/voc.py",
    "voc12/make_toy_voc.py",
    "tool/layout.py",
    "bench/bench_randomwalk.py",  # its temporary input files are per grid size, not per image
}
PER_ID_FILE = re.compile(r'\}\.(png|npz|npy)"')


def test_cli_reference_is_current():
    result = subprocess.run(
        [sys.executable, "docs/make_cli.py", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_cli_reference_lists_every_flag():
    text = (ROOT / "docs" / "cli.md").read_text()
    sys.path.insert(0, str(ROOT))
    import infer_aff

    for action in infer_aff.get_args_parser()._actions:
        for name in action.option_strings:
            if name not in ("-h", "--help"):
                assert f"`{name}`" in text, name


def test_readme_fits_and_its_links_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= MAX_README_LINES
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert not missing, missing


def test_per_image_paths_come_from_the_layout():
    """A per-id file name outside tool/layout.py (and the dataset layouts) is a bypass of the run layout."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("tests/", ".")) or rel in DATASET_LAYOUT_MODULES:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PER_ID_FILE.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, offenders
