#!/usr/bin/env bash
# Run on a machine with the package index: puts the wheels the GPU check needs into .whl/ (git-ignored),
# for Python 3.12 on x86-64 Linux (the GPU machine's python3), plus a compressed ffmpeg binary.
# The device tool carries at most 64 MiB, so the large pieces are opt-in:
#   WITH_COLMAP=1 adds pycolmap (38 MB), WITH_FFMPEG=1 adds ffmpeg (48 MB compressed).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
dl() {
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$@"
}
dl gsplat==1.5.3 pytorch-msssim==1.0.0 flip-evaluator==1.7 plyfile==1.1.5 typer==0.29.1
[ "${WITH_COLMAP:-0}" = 1 ] && dl pycolmap==4.2.1
if [ "${WITH_FFMPEG:-0}" = 1 ]; then
    tmp=$(mktemp -d)
    dl imageio-ffmpeg==0.8.1 -d "$tmp" >/dev/null
    unzip -q -o "$tmp"/imageio_ffmpeg-*.whl -d "$tmp/x"
    xz -T2 -9 -c "$tmp"/x/imageio_ffmpeg/binaries/ffmpeg-* > .whl/ffmpeg.xz
    (cd "$tmp/x" && rm -rf imageio_ffmpeg/binaries/ffmpeg-* && zip -q -r ../imageio_ffmpeg-0.8.1-py3-none-any.whl .)
    mv "$tmp"/imageio_ffmpeg-0.8.1-py3-none-any.whl .whl/
    rm -rf "$tmp"
fi
du -sh .whl
