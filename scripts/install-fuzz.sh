#!/usr/bin/env bash
# Installs cargo-fuzz (the libFuzzer driver behind scripts/fuzz.sh).
#
# Where: nothing is installed when a `cargo-fuzz` is already on PATH, in ~/.cargo/bin or in the
# project-local, git-ignored .tools/cargo/bin. Otherwise it goes to ~/.cargo/bin when that exists and is
# writable, else to .tools/cargo (`cargo install --root`). Set CARGO_FUZZ_ROOT to force a root.
#
# cargo fuzz builds with nightly-only flags (-Zsanitizer, -Cpasses=sancov…). scripts/fuzz.sh runs it on
# the stable toolchain with RUSTC_BOOTSTRAP=1; this script checks that such a build works at all.
#
# Idempotent: a second run only reports where cargo-fuzz is.
set -euo pipefail

VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
local_root="$root/.tools/cargo"

find_cargo_fuzz() {
  local c
  for c in "$(command -v cargo-fuzz 2>/dev/null || true)" "$HOME/.cargo/bin/cargo-fuzz" "$local_root/bin/cargo-fuzz"; do
    if [ -n "$c" ] && [ -x "$c" ]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

if found="$(find_cargo_fuzz)"; then
  echo "install-fuzz: cargo-fuzz already installed: $found ($("$found" --version 2>/dev/null || echo '?'))"
else
  if [ -n "${CARGO_FUZZ_ROOT:-}" ]; then
    install_root="$CARGO_FUZZ_ROOT"
  elif [ -d "$HOME/.cargo/bin" ] && [ -w "$HOME/.cargo/bin" ]; then
    install_root="$HOME/.cargo"
  else
    install_root="$local_root"
  fi
  echo "install-fuzz: installing cargo-fuzz $VERSION into $install_root/bin"
  # Its own target dir, so the project's build cache is not churned.
  CARGO_TARGET_DIR="${CARGO_FUZZ_BUILD_DIR:-/var/tmp/cargo-fuzz-install}" \
    cargo install cargo-fuzz --locked --version "$VERSION" --root "$install_root"
  found="$install_root/bin/cargo-fuzz"
  echo "install-fuzz: installed $found ($("$found" --version))"
fi

# libFuzzer needs a C++ compiler (libfuzzer-sys builds it from source) and the nightly flags.
if ! command -v c++ >/dev/null && ! command -v clang++ >/dev/null; then
  echo "install-fuzz: warning: no C++ compiler (c++ or clang++); libfuzzer-sys cannot build" >&2
fi
if ! RUSTC_BOOTSTRAP=1 rustc -Z help >/dev/null 2>&1; then
  echo "install-fuzz: warning: rustc refuses -Z flags even with RUSTC_BOOTSTRAP=1; cargo fuzz will fail" >&2
  exit 1
fi
echo "install-fuzz: rustc $(rustc --version | cut -d' ' -f2) accepts -Z flags with RUSTC_BOOTSTRAP=1"
