#!/usr/bin/env bash
# Build both images and run them with a real Docker engine: what CI (.ci/run) checks.
#
#   docker/smoke.sh                                   # bases from the registry
#   PYTHON_IMAGE=$(docker/base.sh) docker/smoke.sh   # where no image registry is reachable
#
# Every step is timed; a failed check is reported and the others still run; exit 1 if any failed.
#   build-cpu, build-gpu  `docker build` as docs/DEPLOYMENT.md has it (BuildKit on), with the base
#                         and the OCI label arguments; the image's size, labels,
#                         `pspnet-serve --version` answered inside it, the stitch graphs loading
#   cpu-ready             `docker run -p ... --stop-timeout 75 pspnet-serving:cpu` (the documented line)
#                         until /readyz answers 200: the ready time
#   cpu-outputs           a generated street photo (JPEG 960x720) through /v1/segment, raw body and
#                         multipart, in every output format (color, label, overlay JPEG and PNG,
#                         json with and without the mask), each decoded and checked (format, size,
#                         mode, class ids) by the image's own Pillow
#   cpu-user              the server (PID 1's child) runs as uid 10001; HOME is writable and nothing
#                         complained about it (ONNX Runtime's telemetry id)
#   cpu-health            the HEALTHCHECK turns `healthy`
#   cpu-hardened          --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges:
#                         ready, segments, no capabilities, the root filesystem refuses writes
#   cpu-stop-drain        `docker stop` while a long request (multi-scale + flip, 1920x1440) is in
#                         flight: the request still answers 200, the container exits 143
#   gpu-libs              in the GPU image, with the loader setup the server has (the image's
#                         ld.so.conf.d entry for the wheels' libraries): `ldd -r` on the CUDA
#                         provider (only libcuda.so.1, the driver's, and its symbols unresolved),
#                         on every cuDNN and CUDA library (everything resolved), and the libraries
#                         the provider and cuDNN open at run time are in the loader's cache
#   gpu-fallback          the GPU image without a GPU: ready on CPUExecutionProvider, /readyz's
#                         fallback_reason names libcuda.so.1
#
# Environment: DOCKER (the client; default docker, or Debian's /usr/bin/docker where docker has
# no buildx plugin: Debian's 20.10 client builds with BuildKit through the engine), PYTHON_IMAGE
# (the base both images build on), SMOKE_PORT (first of two host ports, default 18080),
# SMOKE_REPORT (a file that gets the figures as a markdown table), SMOKE_SKIP_BUILD=1 (check
# the images already tagged pspnet-serving:cpu and :cuda).
# shellcheck disable=SC2016  # the single-quoted commands run in the container's shell, expanded there
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
export DOCKER_BUILDKIT=1
if [ -z "${DOCKER:-}" ]; then
    DOCKER=docker
    if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
        DOCKER=/usr/bin/docker
    fi
fi
CPU_IMAGE=pspnet-serving:cpu
GPU_IMAGE=pspnet-serving:cuda
PORT=${SMOKE_PORT:-18080}  # the CPU image; +1 its hardened run; +2 the GPU image
RUN_ID="smoke-$$"
tmp=$(mktemp -d)

d() { "$DOCKER" "$@"; }
say() { printf '%s\n' "$*"; }
cleanup() {
    local ids
    ids=$(d ps -aq --filter "label=pspnet-smoke=$RUN_ID" 2>/dev/null)
    # shellcheck disable=SC2086  # one word per container id
    [ -z "$ids" ] || d rm -f $ids >/dev/null 2>&1
    rm -rf "$tmp"
}
trap cleanup EXIT

failed=()
steps=()
declare -A figure=()
check() {  # check NAME COMMAND...: run it, time it, record the outcome, keep going
    local name=$1 start=$SECONDS rc=0
    shift
    say ""
    say "== $name"
    "$@" || rc=$?
    local took=$((SECONDS - start))
    steps+=("$name|$took|$([ "$rc" -eq 0 ] && echo ok || echo FAILED)")
    if [ "$rc" -eq 0 ]; then say "ok: $name (${took} s)"; else say "FAILED: $name (${took} s)" >&2; failed+=("$name"); fi
}
fail() { say "  $*" >&2; return 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
mb() { d image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f", $1 / 1e6 }'; }

# wait_ready URL SECONDS: poll until 200
wait_ready() {
    local deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/readyz")" = 200 ] && return 0
        sleep 0.2
    done
    return 1
}

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then revision="$revision-dirty"; fi
source_url=$(git remote get-url origin 2>/dev/null || echo unknown)
build_args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url")
[ -z "${PYTHON_IMAGE:-}" ] || build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")

base_image=${PYTHON_IMAGE:-"the default (python:3.11-slim-bookworm)"}
say "docker client $(d version -f '{{.Client.Version}}'), engine $(d version -f '{{.Server.Version}}'), base $base_image"

# ------------------------------------------------------------------ build
built() {  # built FLAVOUR IMAGE [fresh]: labels (this checkout's, when fresh) and --version
    local labels want
    labels=$(d image inspect -f '{{json .Config.Labels}}' "$2") || return 1
    say "  labels: $labels"
    for want in version revision source; do
        [[ $labels == *"\"org.opencontainers.image.$want\":\""[^\"]* ]] || fail "no $want label" || return 1
    done
    if [ "${3:-}" = fresh ]; then
        for want in "\"org.opencontainers.image.version\":\"$version\"" \
                    "\"org.opencontainers.image.revision\":\"$revision\"" \
                    "\"org.opencontainers.image.source\":\"$source_url\""; do
            [[ $labels == *"$want"* ]] || fail "label $want missing" || return 1
        done
    fi
    local answer
    answer=$(d run --rm "$2" --version) || fail "--version failed" || return 1
    say "  $answer"
    [[ $answer == "pspnet-serve $version, ONNX Runtime "* ]] || fail "unexpected --version: $answer"
    # the stitch graphs are package data (service/engine/graphs): every one loads in the image
    answer=$(d run --rm --network none --entrypoint python "$2" -c 'from service.engine.device_kit import \
DeviceKit, GRAPH_NAMES; DeviceKit("CPUExecutionProvider"); print(len(GRAPH_NAMES), "stitch graphs load")') ||
        fail "the stitch graphs do not load in $2" || return 1
    say "  $answer"
    figure[size-$1]="$(mb "$2") MB"
    say "  $2: ${figure[size-$1]}"
}
build() {  # build FLAVOUR IMAGE DOCKERFILE
    local start
    start=$(now)
    d build -f "$3" -t "$2" "${build_args[@]}" . >"$tmp/build-$1.log" 2>&1 ||
        { tail -n 40 "$tmp/build-$1.log" >&2; fail "docker build -f $3 failed"; return 1; }
    figure[build-$1]="$(since "$start") s"
    say "  built in ${figure[build-$1]}"
    built "$1" "$2" fresh
}
build_cpu() { build cpu "$CPU_IMAGE" docker/Dockerfile.cpu; }
build_gpu() { build gpu "$GPU_IMAGE" Dockerfile; }
if [ "${SMOKE_SKIP_BUILD:-0}" = 1 ]; then
    check build-cpu built cpu "$CPU_IMAGE"
    check build-gpu built gpu "$GPU_IMAGE"
else
    check build-cpu build_cpu
    check build-gpu build_gpu
fi

# ------------------------------------------------------------------ the CPU image
CPU=cpu-$RUN_ID
base="http://127.0.0.1:$PORT"
cpu_ready() {
    local start
    start=$(now)
    # the documented line (README, docs/DEPLOYMENT.md), on a loopback port
    d run -d --rm --name "$CPU" --label "pspnet-smoke=$RUN_ID" -p "127.0.0.1:$PORT:8000" --stop-timeout 75 \
        "$CPU_IMAGE" >/dev/null || return 1
    wait_ready "$base" 120 || { d logs "$CPU" 2>&1 | tail -n 30 >&2; fail "not ready in 120 s"; return 1; }
    figure[ready-cpu]="$(since "$start") s"
    say "  ready in ${figure[ready-cpu]} after docker run: $(curl -s "$base/readyz")"
}

# py_in SCRIPT ARGS...: the CPU image's own Python (Pillow, numpy); stdin and stdout are the caller's
py_in() { local script=$1; shift; d run --rm -i --network none --entrypoint python "$CPU_IMAGE" -c "$script" "$@"; }

# street W H > file.jpg: a drawn street scene with sensor noise, as a camera JPEG
read -r -d '' STREET_PY <<'EOF'
import io, sys
import numpy as np
from PIL import Image, ImageDraw
w, h = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
im = Image.new("RGB", (w, h), (135, 170, 215))
draw = ImageDraw.Draw(im)
draw.rectangle([0, int(h * 0.62), w, h], fill=(90, 90, 95))                  # road
draw.rectangle([0, int(h * 0.58), w, int(h * 0.62)], fill=(160, 155, 150))   # pavement
x = 0
while x < w:                                                                  # buildings
    bw, bh = int(rng.integers(w // 12, w // 5)), int(rng.integers(h // 5, h // 2))
    draw.rectangle([x, int(h * 0.58) - bh, x + bw, int(h * 0.58)], fill=tuple(map(int, rng.integers(90, 200, 3))))
    x += bw + int(rng.integers(0, w // 40 + 1))
for _ in range(6):                                                            # trees
    cx, r = int(rng.integers(0, w)), h // 14
    draw.ellipse([cx - r, int(h * 0.45) - r, cx + r, int(h * 0.45) + r], fill=(50, 120, 40))
for _ in range(3):                                                            # cars
    cx, cy = int(rng.integers(0, w - w // 8)), int(h * 0.66)
    draw.rectangle([cx, cy, cx + w // 8, cy + h // 12], fill=tuple(map(int, rng.integers(20, 220, 3))))
noisy = np.asarray(im).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
out = io.BytesIO()
Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
sys.stdout.buffer.write(out.getvalue())
EOF
street() { py_in "$STREET_PY" "$1" "$2" </dev/null; }

# verify KIND W H < response: decoded and checked by the image's Pillow
read -r -d '' VERIFY_PY <<'EOF'
import base64, io, json, sys
from PIL import Image
kind, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = sys.stdin.buffer.read()
def image(raw, fmt, modes):
    im = Image.open(io.BytesIO(raw))
    assert im.format == fmt and im.mode in modes and im.size == (w, h), (im.format, im.mode, im.size)
    return im
if kind == "color":
    lo, hi = image(data, "PNG", {"P"}).getextrema()
    assert hi > lo, "one colour only"
elif kind == "label":
    im = image(data, "PNG", {"L"})
    lo, hi = im.getextrema()
    assert hi < 11 and hi > lo, (lo, hi)  # the CamVid model's 11 class ids, more than one present
elif kind == "overlay":
    image(data, "JPEG", {"RGB"})
elif kind == "overlay-png":
    image(data, "PNG", {"RGB", "RGBA"})
elif kind in ("json", "json-mask"):
    doc = json.loads(data)
    assert (doc["width"], doc["height"]) == (w, h), doc
    assert len(doc["classes"]) > 1 and abs(sum(c["fraction"] for c in doc["classes"]) - 1) < 1e-6, doc
    if kind == "json-mask":
        image(base64.b64decode(doc["mask"]), "PNG", {"L"})
    else:
        assert "mask" not in doc
print(f"  {kind}: {len(data)} bytes, valid")
EOF
verify() { py_in "$VERIFY_PY" "$@"; }

cpu_outputs() {
    street 960 720 >"$tmp/street.jpg" || return 1
    local url="$base/v1/segment" code
    # raw body (the README's first line), then multipart in every output
    code=$(curl -s -o "$tmp/out-raw" -w '%{http_code}' --data-binary @"$tmp/street.jpg" \
        -H 'Content-Type: image/jpeg' "$url")
    [ "$code" = 200 ] || fail "raw body: HTTP $code" || return 1
    verify color 960 720 <"$tmp/out-raw" || return 1
    local kind query
    for kind in color label overlay overlay-png json json-mask; do
        case "$kind" in
            overlay-png) query="output=overlay&format=png" ;;
            json-mask) query="output=json&include_mask=true" ;;
            *) query="output=$kind" ;;
        esac
        code=$(curl -s -o "$tmp/out-$kind" -w '%{http_code}' -F image=@"$tmp/street.jpg" "$url?$query")
        [ "$code" = 200 ] || fail "$query: HTTP $code $(head -c 300 "$tmp/out-$kind")" || return 1
        verify "$kind" 960 720 <"$tmp/out-$kind" || return 1
    done
}

cpu_user() {
    local uid home
    uid=$(d exec "$CPU" sh -c 'awk "/^Uid:/ { print \$2 }" /proc/1/status')
    [ "$uid" = 10001 ] || fail "PID 1 runs as uid $uid, not 10001" || return 1
    uid=$(d exec "$CPU" sh -c 'for p in /proc/[0-9]*; do [ "$(cat $p/comm)" = pspnet-serve ] && awk "/^Uid:/ { print \$2 }" $p/status; done' | sort -u)
    [ "$uid" = 10001 ] || fail "the server runs as uid '$uid', not 10001" || return 1
    home=$(d exec "$CPU" sh -c 'test -w "$HOME" && echo "$HOME"') || fail "HOME is not writable" || return 1
    if d logs "$CPU" 2>&1 | grep -i -E 'failed to persist|permission denied'; then
        fail "the log complains about a write"
        return 1
    fi
    say "  uid 10001, HOME=$home writable, no write errors in the log"
}

cpu_health() {
    local start status
    start=$(now)
    for _ in $(seq 1 60); do
        status=$(d inspect -f '{{.State.Health.Status}}' "$CPU")
        [ "$status" = healthy ] && break
        sleep 1
    done
    [ "$status" = healthy ] || fail "health: $status" || return 1
    say "  healthy ($(since "$start") s after the checks began; HEALTHCHECK interval 15 s)"
}

cpu_hardened() {
    local name=hard-$RUN_ID hbase="http://127.0.0.1:$((PORT + 1))" code caps start
    start=$(now)
    d run -d --rm --name "$name" --label "pspnet-smoke=$RUN_ID" -p "127.0.0.1:$((PORT + 1)):8000" \
        --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
        "$CPU_IMAGE" >/dev/null || return 1
    wait_ready "$hbase" 120 || { d logs "$name" 2>&1 | tail -n 30 >&2; fail "not ready"; return 1; }
    say "  ready in $(since "$start") s"
    code=$(curl -s -o "$tmp/out-hard" -w '%{http_code}' -F image=@"$tmp/street.jpg" "$hbase/v1/segment?output=json")
    [ "$code" = 200 ] || fail "segment: HTTP $code" || return 1
    verify json 960 720 <"$tmp/out-hard" || return 1
    caps=$(d exec "$name" sh -c 'awk "/^CapEff:/ { print \$2 }" /proc/1/status')
    [ "$caps" = 0000000000000000 ] || fail "effective capabilities $caps" || return 1
    if d exec "$name" sh -c 'touch /app/written' 2>/dev/null; then fail "the root filesystem took a write"; return 1; fi
    if d logs "$name" 2>&1 | grep -i -E 'failed to persist|permission denied|read-only file system'; then
        fail "the log complains about a write"
        return 1
    fi
    d stop "$name" >/dev/null
    say "  read-only root, no capabilities: served, and writes to / refused"
}

cpu_stop_drain() {
    street 1920 1440 >"$tmp/large.jpg" || return 1
    # about 20 s on 2 idle cores: longer than Docker's default stop timeout (10 s), well within the
    # request deadline (60 s) and --stop-timeout 75
    local query="mode=multiscale&flip=true&scales=2.0,2.5,3.0,3.5,4.0&output=json" start stopped code exit_code
    start=$(now)
    curl -s -o "$tmp/out-long" -w '%{http_code} %{time_total}' -F image=@"$tmp/large.jpg" \
        "$base/v1/segment?$query" >"$tmp/long.status" &
    local client=$!
    # in flight: this scrape and the request (the gauge counts every HTTP request being served)
    for _ in $(seq 1 50); do
        curl -s "$base/metrics" | grep -q -E '^pspnet_requests_in_flight [2-9]' && break
        sleep 0.1
    done
    sleep 1
    d wait "$CPU" >"$tmp/exit_code" 2>&1 &  # --rm: the exit code is only docker wait's to tell
    local waiter=$!
    stopped=$(now)
    d stop "$CPU" >/dev/null &  # the container's own stop timeout: --stop-timeout 75
    local stopper=$!
    wait "$client"
    read -r code took <"$tmp/long.status"
    wait "$stopper"
    figure[stop]="$(since "$stopped") s"
    local verdict="Docker's default 10 s would have killed it"
    awk -v t="${figure[stop]% s}" 'BEGIN { exit !(t > 10) }' || verdict="within Docker's default 10 s, too"
    wait "$waiter"
    exit_code=$(cat "$tmp/exit_code")
    say "  request: HTTP $code after $took s (docker stop sent $(awk -v a="$start" -v b="$stopped" 'BEGIN { printf "%.1f", b - a }') s in); container stopped ${figure[stop]} after docker stop"
    figure[long-request]="HTTP $code in ${took%.*} s, docker stop sent $(awk -v a="$start" -v b="$stopped" 'BEGIN { printf "%.1f", b - a }') s in"
    figure[stop]="${figure[stop]} ($verdict)"
    [ "$code" = 200 ] || fail "the request in flight got HTTP $code" || return 1
    verify json 1920 1440 <"$tmp/out-long" || return 1
    # uvicorn finishes the request, then re-raises SIGTERM: 128 + 15 through tini
    say "  exit code $exit_code"
    [ "$exit_code" = 143 ] || fail "exit code $exit_code, not 143" || return 1
}

check cpu-ready cpu_ready
check cpu-outputs cpu_outputs
check cpu-user cpu_user
check cpu-health cpu_health
check cpu-hardened cpu_hardened
check cpu-stop-drain cpu_stop_drain

# ------------------------------------------------------------------ the GPU image
gpu_libs() {
    d run --rm -i --network none --entrypoint sh "$GPU_IMAGE" -s >"$tmp/ldd.txt" 2>&1 <<'EOF'
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
provider=$site/onnxruntime/capi/libonnxruntime_providers_cuda.so
for lib in "$provider" "$site"/nvidia/cudnn/lib/lib*.so* "$site"/nvidia/cu13/lib/lib*.so*; do
    echo "== $lib"
    ldd -r "$lib" 2>&1 | grep -E 'not found|undefined symbol' | sed 's/^[[:space:]]*//'
done
echo "== loader cache"
for name in libcudnn.so.9 libnvrtc.so.13 libcublasLt.so.13 libcublas.so.13 libcudart.so.13 libcurand.so.10; do
    ldconfig -p | grep -q "^[[:space:]]$name " && echo "cached $name" || echo "uncached $name"
done
EOF
    [ -s "$tmp/ldd.txt" ] || fail "no output from the GPU image" || return 1
    awk '
        /^== / { lib = $2; n_libs += (lib ~ /\.so/); next }
        /^cached / { cached++; next }
        /^uncached / { print "  not in the loader cache: " $2; bad++; next }
        lib ~ /libonnxruntime_providers_cuda\.so$/ && /^libcuda\.so\.1 => not found/ { nocuda = 1; next }
        # the provider: driver API symbols (libcuda) and the ORT core symbol the Python module provides
        lib ~ /libonnxruntime_providers_cuda\.so$/ && /^undefined symbol: (cu[A-Z][A-Za-z0-9_]*|Provider_GetHost)[[:space:]]/ { skipped++; next }
        { print "  " lib ": " $0; bad++ }
        END {
            printf "  %d libraries: only libcuda.so.1 (and %d of its or ORT core'"'"'s symbols) unresolved, %d run-time names cached\n", n_libs, skipped, cached
            if (!nocuda) { print "  the provider did not miss libcuda.so.1: is a driver in the image?"; bad++ }
            exit bad > 0
        }' "$tmp/ldd.txt"
}

gpu_fallback() {
    local name=gpu-$RUN_ID gbase="http://127.0.0.1:$((PORT + 2))" start ready
    start=$(now)
    d run -d --rm --name "$name" --label "pspnet-smoke=$RUN_ID" -p "127.0.0.1:$((PORT + 2)):8000" --stop-timeout 75 \
        "$GPU_IMAGE" >/dev/null || return 1
    wait_ready "$gbase" 120 || { d logs "$name" 2>&1 | tail -n 30 >&2; fail "not ready"; return 1; }
    figure[ready-gpu]="$(since "$start") s"
    ready=$(curl -s "$gbase/readyz")
    say "  ready in ${figure[ready-gpu]} (no GPU): $ready"
    [[ $ready == *'"provider":"CPUExecutionProvider"'* ]] || fail "not on the CPU" || return 1
    [[ $ready == *'"fallback_reason":"CUDAExecutionProvider did not start'*libcuda.so.1* ]] ||
        fail "fallback_reason does not name libcuda.so.1" || return 1
    local code
    code=$(curl -s -o "$tmp/out-gpu" -w '%{http_code}' -F image=@"$tmp/street.jpg" "$gbase/v1/segment?output=label")
    [ "$code" = 200 ] || fail "segment: HTTP $code" || return 1
    verify label 960 720 <"$tmp/out-gpu" || return 1
    d stop "$name" >/dev/null
}

check gpu-libs gpu_libs
check gpu-fallback gpu_fallback

# ------------------------------------------------------------------ report
say ""
say "== summary"
report() {
    echo "| step | seconds | result |"
    echo "| --- | --- | --- |"
    local s
    for s in "${steps[@]}"; do IFS='|' read -r n t r <<<"$s"; echo "| $n | $t | $r |"; done
    echo ""
    echo "| figure | value |"
    echo "| --- | --- |"
    local k
    for k in build-cpu size-cpu ready-cpu build-gpu size-gpu ready-gpu long-request stop; do
        [ -z "${figure[$k]:-}" ] || echo "| $k | ${figure[$k]} |"
    done
}
report
[ -z "${SMOKE_REPORT:-}" ] || report >"$SMOKE_REPORT"
if [ "${#failed[@]}" -gt 0 ]; then
    say "smoke: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
    exit 1
fi
say "smoke: all checks passed"
