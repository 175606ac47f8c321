#!/usr/bin/env bash
# Installs schemathesis (PyPI) into a project-local, git-ignored virtualenv, .tools/schemathesis/, and
# links its `st` as .tools/bin/st, for tests/it/schemathesis.rs: schemathesis driven by draftd's own
# OpenAPI document against a live `draftd serve`.
#
# Idempotent: does nothing when .tools/bin/st already reports the pinned version.
set -euo pipefail

VERSION="4.32.5"

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/schemathesis"
bin="$root/.tools/bin"

st_version() { [ -x "$bin/st" ] && "$bin/st" --version 2>/dev/null | sed -n 's/.*version \([0-9][0-9.]*\).*/\1/p' || true; }

if [ "$(st_version)" = "$VERSION" ]; then
  echo "st:      $bin/st v$VERSION (already installed)"
  exit 0
fi
# The newest Python 3.9+ found: on PATH, or among pyenv's versions (the shims run only the selected
# one). CPython before 3.11.8 and 3.12.2 can fail schemathesis' coverage phase with "SystemError: AST
# constructor recursion depth mismatch" (CPython gh-106905), so an older one is used with a warning.
python="" best=0
pyenv_versions="$(pyenv root 2>/dev/null || true)/versions"
for candidate in python3 python3.13 python3.12 python3.11 "$pyenv_versions"/3.*/bin/python3; do
  v="$("$candidate" -c 'import sys; v = sys.version_info; print(v[0] * 10000 + v[1] * 100 + v[2])' 2>/dev/null)" || continue
  if [ "$v" -ge 30900 ] && [ "$v" -gt "$best" ]; then python="$candidate" best="$v"; fi
done
[ -n "$python" ] || { echo "install-schemathesis: schemathesis $VERSION needs Python 3.9 or later" >&2; exit 1; }
if [ "$best" -lt 31108 ] || { [ "$best" -ge 31200 ] && [ "$best" -lt 31202 ]; }; then
  echo "install-schemathesis: warning: $("$python" --version) may fail with CPython gh-106905; 3.11.8+ or 3.12.2+ does not" >&2
fi

echo "install-schemathesis: installing schemathesis==$VERSION from PyPI into $venv ($("$python" --version))"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$VERSION"
mkdir -p "$bin"
ln -sf "$venv/bin/st" "$bin/st"
[ "$(st_version)" = "$VERSION" ] || { echo "install-schemathesis: $bin/st does not report $VERSION" >&2; exit 1; }
echo "st:      $bin/st v$VERSION"
