#!/bin/sh
# Install the service into a virtual environment: the ONE install step of the
# images (Dockerfile, docker/Dockerfile.cpu) and of CI (tests/deploy), so what
# ships is what is tested.
#
#   docker/install.sh {cpu|gpu} VENV [--deps-only]
#
# - creates VENV with $PYTHON (default python3) unless it exists;
# - installs the pinned dependencies of the flavour (docker/requirements-FLAVOUR.txt,
#   written by docker/lock.sh: the service's dependencies + onnxruntime or
#   onnxruntime-gpu), wheels only, so a slim image needs no compiler, and each
#   file's sha256 checked (--require-hashes: nothing unpinned can come along);
# - unless --deps-only (the images use it for a cached dependency layer): installs
#   the project from the directory above this script, without dependencies, so
#   nothing unpinned slips in; then `pip check`;
# - refuses the result if it holds torch or the other ONNX Runtime flavour.
#
# pip's own environment variables apply (the images set PIP_NO_CACHE_DIR=1).
set -eu

usage() {
    echo "usage: $0 {cpu|gpu} VENV [--deps-only]" >&2
    exit 2
}

[ $# -ge 2 ] || usage
flavour=$1
venv=$2
deps_only=0
case "${3:-}" in
    "") ;;
    --deps-only) deps_only=1 ;;
    *) usage ;;
esac
case "$flavour" in
    cpu) wanted=onnxruntime; unwanted=onnxruntime-gpu ;;
    gpu) wanted=onnxruntime-gpu; unwanted=onnxruntime ;;
    *) usage ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
requirements="$here/requirements-$flavour.txt"
[ -f "$requirements" ] || { echo "install.sh: missing $requirements" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"

"$py" -m pip install --disable-pip-version-check --only-binary=:all: --require-hashes -r "$requirements"

if [ "$deps_only" -eq 0 ]; then
    "$py" -m pip install --disable-pip-version-check --no-deps "$root"
    "$py" -m pip check
fi

# The flavour is what was asked for, and nothing that must not be there came along.
"$py" - "$wanted" "$unwanted" <<'EOF'
import sys
from importlib import metadata, util

wanted, unwanted = sys.argv[1], sys.argv[2]
installed = {d.metadata["Name"].lower().replace("_", "-") for d in metadata.distributions()}
problems = []
if wanted not in installed:
    problems.append(f"{wanted} is not installed")
if unwanted in installed:
    problems.append(f"{unwanted} is installed too (the two wheels overwrite each other's files)")
if "torch" in installed or util.find_spec("torch") is not None:
    problems.append("torch is installed: the service must not need it")
if problems:
    sys.exit("install.sh: " + "; ".join(problems))
print(f"install.sh: {wanted} {metadata.version(wanted)} in {sys.prefix}, no torch")
EOF
