#!/bin/sh
# The one way sessionrec installs torch, used by the Makefile and the Dockerfile: the pinned
# CPU build, from PyTorch's CPU wheel index (PyPI's Linux build of torch pulls GBs of CUDA
# packages). TORCH_INDEX_URL names another index (a mirror) if that one cannot be reached.
# torch alone comes from that index; its dependencies come from the usual one.
#   usage: sh deploy/install-torch.sh [PYTHON] [PIP OPTIONS...]
set -eu
python="${1:-python3}"
[ $# -gt 0 ] && shift
"$python" -m pip install "$@" --no-deps \
    --extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
    "torch==2.13.0+cpu"
exec "$python" -m pip install "$@" "torch==2.13.0+cpu"
