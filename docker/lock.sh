#!/bin/sh
# Pin the images' Python dependencies, with hashes: docker/requirements-{cpu,gpu}.txt.
#
#   sh docker/lock.sh        # after changing dependencies in pyproject.toml or docker/gpu-libs.in
#
# uv pip compile resolves pyproject.toml's dependencies plus the flavour's extra
# (never `model`: the images carry no torch) for each image's own interpreter and
# platform, wheels only, with every file's sha256; the gpu flavour adds
# docker/gpu-libs.in, the CUDA and cuDNN wheels (the GPU image has no vendor base).
# The current lock is uv's starting point, so a pin moves only when it must (uv's
# --upgrade-package NAME moves one on purpose: LOCK_ARGS="--upgrade-package numpy").
# A flavour built for several platforms must resolve to the same set on each (no
# environment markers), which is checked here. docker/install.sh installs with
# --require-hashes; the tests (tests/deploy/test_lock.py) check the files against
# pyproject.toml and gpu-libs.in offline, and the install test installs them for real.
# uv: `pip install uv`, or the pinned one of scripts/deploy-tools.txt (.venv-tools/bin/uv).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
uv=${UV:-uv}
command -v "$uv" >/dev/null 2>&1 || uv="$root/.venv-tools/bin/uv"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# compile FLAVOUR PYTHON PLATFORM OUT [MORE_INPUTS...]
compile() {
    flavour=$1 python=$2 platform=$3 out=$4
    shift 4
    # start from the current pins (uv prefers the versions already in the output file)
    [ -f "$out" ] || cp "$here/requirements-$flavour.txt" "$out" 2>/dev/null || true
    # shellcheck disable=SC2086  # LOCK_ARGS: words for uv
    (cd "$root" && "$uv" pip compile pyproject.toml "$@" --extra "$flavour" --python-version "$python" \
        --python-platform "$platform" --only-binary :all: --generate-hashes --quiet \
        --custom-compile-command "sh docker/lock.sh" ${LOCK_ARGS:-} -o "$out")
}

# cpu: python:3.11-slim-bookworm (glibc 2.36), built for laptops of both kinds
compile cpu 3.11 x86_64-manylinux_2_36 "$tmp/cpu-x86_64.txt"
compile cpu 3.11 aarch64-manylinux_2_36 "$tmp/cpu-aarch64.txt"
if ! cmp -s "$tmp/cpu-x86_64.txt" "$tmp/cpu-aarch64.txt"; then
    diff "$tmp/cpu-x86_64.txt" "$tmp/cpu-aarch64.txt" >&2 || true
    echo "lock.sh: x86_64 and aarch64 resolve differently; one file cannot serve both" >&2
    exit 1
fi
cp "$tmp/cpu-x86_64.txt" "$here/requirements-cpu.txt"

# gpu: the same base, python:3.11-slim-bookworm (or docker/base.sh's bookworm image:
# python3 3.11, glibc 2.36), plus the CUDA wheels; onnxruntime-gpu is x86_64 here
compile gpu 3.11 x86_64-manylinux_2_36 "$tmp/gpu.txt" docker/gpu-libs.in
cp "$tmp/gpu.txt" "$here/requirements-gpu.txt"
echo "lock.sh: wrote docker/requirements-cpu.txt and docker/requirements-gpu.txt"
