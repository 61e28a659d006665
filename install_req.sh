#!/usr/bin/env bash
# Set up vqdiff in the current Python environment (a venv or conda env you activated first).
#
#   bash install_req.sh                 # torch 2.14.1 / torchvision 0.29.1 from the default index
#   TORCH_INDEX_URL=<wheel index> bash install_req.sh
#                                       # the same pins from another index, e.g. PyTorch's own index
#                                       # for your CUDA version (cu126, cu128, ...) or its CPU-only one
#   PYTHON=python3.11 bash install_req.sh
#
# Safe to re-run: pip skips what is already installed at the pinned versions.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")

have_pins() {
  "$PYTHON" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
ok = m.version("torch").split("+")[0] == "2.14.1" and m.version("torchvision").split("+")[0] == "0.29.1"
sys.exit(0 if ok else 1)
PY
}

if have_pins; then
  echo "[install_req] torch 2.14.1 and torchvision 0.29.1 already installed"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$PYTHON" -m pip install "${TORCH_PINS[@]}" --index-url "$TORCH_INDEX_URL"
else
  "$PYTHON" -m pip install "${TORCH_PINS[@]}"
fi

# The package itself, editable, with the test/benchmark extras and the web page (gradio).
"$PYTHON" -m pip install -e ".[dev,app]"
"$PYTHON" -c "import torch, vqdiff; print('[install_req] vqdiff', vqdiff.__version__, '| torch', torch.__version__, '| cuda available:', torch.cuda.is_available())"
