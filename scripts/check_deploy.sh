#!/usr/bin/env bash
# Validate the deployment files without a Docker engine or a cluster:
#
#   - every Dockerfile: hadolint at warning level; the shell scripts (docker/*.sh, this one,
#     .ci/run): shellcheck;
#   - docker/compose.yaml: the compose-spec JSON schema (vendored by check-jsonschema);
#   - docker/prometheus.yml: promtool check config;
#   - docker/grafana: the dashboard JSON and the provisioning YAML parse;
#   - k8s/: every manifest, and every kustomization rendered (scripts/k8s_overlay.py),
#     validated with kubernetes-validate, strictly, for each of K8S_VERSIONS;
#   (docker/requirements-*.txt are checked offline by tests/deploy/test_lock.py and
#   installed with --require-hashes by tests/deploy/test_install.py; building and running the
#   images needs a Docker engine: docker/smoke.sh, which .ci/run runs.)
#
# Needs python3 (3.11+), pip and, for promtool, apt. Tools go into their own venv,
# $PSPNET_TOOLS_VENV (default .venv-tools), reused while scripts/deploy-tools.txt is
# unchanged. Runs every check, then exits 1 if any failed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS=${PSPNET_TOOLS_VENV:-$ROOT/.venv-tools}
PYTHON=${PYTHON:-python3}
K8S_VERSIONS=(1.30.0 1.37.0)  # oldest we claim, newest kubernetes-validate ships

failed=()
section() { printf '\n== %s\n' "$*"; }
check() {  # check NAME CMD...: run, record the outcome, keep going
    local name=$1
    shift
    if "$@"; then
        echo "ok: $name"
    else
        echo "FAILED: $name" >&2
        failed+=("$name")
    fi
}

# ------------------------------------------------------------------ tools
section "tools venv: $TOOLS"
stamp="$TOOLS/.deploy-tools.sha256"
want=$(sha256sum scripts/deploy-tools.txt | cut -d' ' -f1)
if [ ! -x "$TOOLS/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$PYTHON" -m venv "$TOOLS"
    printf '*\n' > "$TOOLS/.gitignore"  # the venv ignores itself
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/deploy-tools.txt
    echo "$want" > "$stamp"
fi
export PATH="$TOOLS/bin:$PATH"
hadolint --version
kubernetes-validate --version
check-jsonschema --version

# promtool: from Debian's prometheus package, unpacked into the tools dir rather
# than installed: installing it would also start a Prometheus server here.
promtool_bin=""
if command -v promtool >/dev/null 2>&1; then
    promtool_bin=$(command -v promtool)
elif [ -x "$TOOLS/prometheus/usr/bin/promtool" ]; then
    promtool_bin="$TOOLS/prometheus/usr/bin/promtool"
elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    section "promtool: fetching Debian's prometheus package"
    debs=$(mktemp -d)
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
    if ! (cd "$debs" && apt-get download -o APT::Sandbox::User=root prometheus); then
        # a fresh machine has no package lists yet
        "${as_root[@]}" apt-get update -qq
        (cd "$debs" && apt-get download -o APT::Sandbox::User=root prometheus)
    fi
    dpkg-deb -x "$debs"/prometheus_*.deb "$TOOLS/prometheus"
    rm -rf "$debs"
    promtool_bin="$TOOLS/prometheus/usr/bin/promtool"
fi

# ------------------------------------------------------------------ Dockerfiles
section "hadolint"
for f in Dockerfile docker/Dockerfile*; do
    case "$f" in *.dockerignore) continue ;; esac
    [ -f "$f" ] || { echo "FAILED: no $f" >&2; failed+=("missing $f"); continue; }
    check "hadolint $f" hadolint --no-color --failure-threshold warning "$f"
done

section "shellcheck"
scripts=(docker/*.sh scripts/check_deploy.sh .ci/run)
check "shellcheck ${scripts[*]}" shellcheck "${scripts[@]}"

# ------------------------------------------------------------------ compose
section "compose schema"
check "compose-spec docker/compose.yaml" \
    check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml

# ------------------------------------------------------------------ Prometheus
section "promtool"
if [ -n "$promtool_bin" ]; then
    "$promtool_bin" --version | head -1
    check "promtool check config docker/prometheus.yml" "$promtool_bin" check config docker/prometheus.yml
else
    echo "!!!!!!!! SKIPPED: promtool not found and apt-get unavailable: docker/prometheus.yml NOT checked !!!!!!!!" >&2
fi

# ------------------------------------------------------------------ Grafana
section "grafana"
parse_grafana() {
    "$TOOLS/bin/python" - <<'EOF'
import json, sys
from pathlib import Path
import yaml
bad = 0
for p in sorted(Path("docker/grafana").rglob("*")):
    try:
        if p.suffix == ".json":
            dash = json.loads(p.read_text())
            assert dash.get("panels"), "no panels"
        elif p.suffix in (".yaml", ".yml"):
            assert isinstance(yaml.safe_load(p.read_text()), dict), "not a mapping"
        else:
            continue
        print(f"parsed {p}")
    except Exception as e:  # report every file, then fail
        print(f"{p}: {e}", file=sys.stderr)
        bad += 1
sys.exit(1 if bad else 0)
EOF
}
check "grafana dashboard and provisioning parse" parse_grafana

# ------------------------------------------------------------------ Kubernetes
section "kubernetes-validate"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
# k8s/kserve/ is KServe's CRD, which no offline schema covers: tests/deploy/test_kserve.py checks it
mapfile -t manifests < <(find k8s -name '*.yaml' ! -name kustomization.yaml ! -path 'k8s/kserve/*' | sort)
render() { "$TOOLS/bin/python" scripts/k8s_overlay.py "$1" > "$2"; }
for dir in $(find k8s -name kustomization.yaml -exec dirname {} \; | sort); do
    out="$rendered/$(echo "$dir" | tr / _).yaml"
    if render "$dir" "$out"; then
        echo "ok: render $dir"
        manifests+=("$out")
    else
        echo "FAILED: render $dir" >&2
        failed+=("render $dir")
    fi
done
for v in "${K8S_VERSIONS[@]}"; do
    check "kubernetes-validate $v" kubernetes-validate --strict --quiet -k "$v" "${manifests[@]}"
done

# ------------------------------------------------------------------ verdict
section "summary"
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'check_deploy: %d check(s) failed:\n' "${#failed[@]}" >&2
    printf '  - %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "check_deploy: all checks passed"
