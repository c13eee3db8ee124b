#!/usr/bin/env bash
# Every CUDA check of the project in one call, figures into one JSON file (issue 17).
#
# On the GPU machine, from the repository root:   bash scripts/gpu_check.sh [OUT_DIR]
# The machine needs python3 with a CUDA build of torch. Packages it lacks (gsplat, pytorch-msssim,
# flip-evaluator, plyfile, pycolmap, imageio-ffmpeg, typer...) can travel as wheels in .whl/
# (bash scripts/gpu_prepare.sh makes that folder on a machine with the package index); they are
# installed into /tmp/site, never over the machine's own torch.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PWD"
fi
if [ -f .whl/ffmpeg.xz ] && ! command -v ffmpeg >/dev/null; then
    xz -d -c .whl/ffmpeg.xz > /tmp/ffmpeg && chmod +x /tmp/ffmpeg && export IMAGEIO_FFMPEG_EXE=/tmp/ffmpeg
fi
exec "$py" scripts/gpu_check.py --out "$out"
