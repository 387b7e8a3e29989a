#!/usr/bin/env bash
# One command for the CUDA paths on one GPU (within 8 minutes); see bench/gpu_check.py for what it runs.
#   bash bench/gpu_check.sh                                   # writes the "## GPU check" section of bench/RESULTS.md
#   bash bench/gpu_check.sh --device cpu --width_mult 0.125 --quick --results /tmp/RESULTS.md   # CPU dry run
# A machine without registry access: put pure-Python wheels (e.g. tensorboardX) in bench/wheels/ (git-ignored);
# they are imported from there. Nothing here needs pydensecrf.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
for wheel in bench/wheels/*.whl; do
    PYTHONPATH="$PWD/$wheel${PYTHONPATH:+:$PYTHONPATH}"
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "${PYTHON:-python3}" -m bench.gpu_check "$@"
