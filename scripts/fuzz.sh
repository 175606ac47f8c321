#!/usr/bin/env bash
# Runs draftd's libFuzzer targets (fuzz/fuzz_targets/) for a while each and reports what they did.
#
#   scripts/fuzz.sh [target|all] [seconds]      default: all, 60 s per target
#
# Targets: github_webhook gitlab_webhook command naming config duration.
# Per target it prints executions (libFuzzer's stat::number_of_executed_units), execs/s, crashes and
# the corpus size, and exits non-zero when any target crashed, naming the reproducer, which stays in
# fuzz/artifacts/<target>/. Re-run one with:  scripts/fuzz.sh repro <target> <file>
# Shrink a grown working corpus to the units that add coverage:  scripts/fuzz.sh minimize <target>
#
# The committed seeds (fuzz/seeds/<target>/) are copied into the working corpus fuzz/corpus/<target>/,
# which libFuzzer grows; the corpus, artifacts and logs are git-ignored.
#
# Environment:
#   CARGO_TARGET_DIR   build dir (default /var/tmp/draftd-fuzz-target, apart from the project's own)
#   FUZZ_SANITIZER     cargo fuzz --sanitizer (default none: draftd is safe Rust and the fuzzers hunt panics;
#                      use address for unsafe code in dependencies)
#   FUZZ_NO_BUILD=1    skip the build (another invocation just built it; for parallel runs)
#   FUZZ_ARGS          extra libFuzzer flags, e.g. "-max_len=8192 -jobs=2"
# cargo fuzz needs nightly flags; on a stable toolchain RUSTC_BOOTSTRAP=1 allows them (set here).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/fuzz"
ALL=(github_webhook gitlab_webhook command naming config duration)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/draftd-fuzz-target}"
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-none}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$CARGO_TARGET_DIR/$triple/release"

cargo_fuzz() {
  if command -v cargo-fuzz >/dev/null; then
    cargo fuzz "$@"
  elif [ -x "$root/.tools/cargo/bin/cargo-fuzz" ]; then
    "$root/.tools/cargo/bin/cargo-fuzz" fuzz "$@"
  else
    echo "fuzz: cargo-fuzz is not installed; run scripts/install-fuzz.sh" >&2
    exit 1
  fi
}

build() {
  [ "${FUZZ_NO_BUILD:-}" = 1 ] && return 0
  echo "fuzz: building (sanitizer $sanitizer, debug assertions on) into $CARGO_TARGET_DIR" >&2
  (cd "$root" && cargo_fuzz build --sanitizer "$sanitizer" --debug-assertions "$@")
}

if [ "${1:-}" = repro ]; then
  target="${2:?usage: scripts/fuzz.sh repro <target> <file>}"
  file="${3:?usage: scripts/fuzz.sh repro <target> <file>}"
  build "$target"
  exec "$bin_dir/$target" -runs=1 "$file"
fi

if [ "${1:-}" = minimize ]; then
  target="${2:?usage: scripts/fuzz.sh minimize <target>}"
  build "$target"
  corpus="$fuzz/corpus/$target"
  mkdir -p "$corpus.min"
  "$bin_dir/$target" -merge=1 "$corpus.min" "$corpus" "$fuzz/seeds/$target"
  rm -rf "$corpus" && mv "$corpus.min" "$corpus"
  echo "fuzz: $target corpus now $(find "$corpus" -type f | wc -l) files"
  exit 0
fi

what="${1:-all}"
seconds="${2:-60}"
case "$seconds" in '' | *[!0-9]*) echo "fuzz: seconds must be a whole number, not $seconds" >&2; exit 2 ;; esac
if [ "$what" = all ]; then
  targets=("${ALL[@]}")
else
  case " ${ALL[*]} " in
    *" $what "*) targets=("$what") ;;
    *) echo "fuzz: unknown target $what; one of: all ${ALL[*]}" >&2; exit 2 ;;
  esac
fi

if [ "$what" = all ]; then build; else build "$what"; fi

stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }

crashed=()
summary=()
mkdir -p "$fuzz/logs"
for t in "${targets[@]}"; do
  corpus="$fuzz/corpus/$t"
  artifacts="$fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  # Seeds only ever add to the working corpus; what libFuzzer found stays.
  cp -n "$fuzz/seeds/$t"/* "$corpus/" 2>/dev/null || true
  dict=()
  [ -f "$fuzz/dicts/$t.dict" ] && dict=("-dict=$fuzz/dicts/$t.dict")
  log="$fuzz/logs/$t-$(date -u +%Y%m%dT%H%M%SZ).log"
  echo "fuzz: $t for ${seconds}s (log $log)" >&2
  rc=0
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  "$bin_dir/$t" "$corpus" "${dict[@]}" -artifact_prefix="$artifacts/" -max_total_time="$seconds" \
    -print_final_stats=1 -timeout=25 -rss_limit_mb=2048 ${FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
  execs="$(stat number_of_executed_units "$log")"
  rate="$(stat average_exec_per_sec "$log")"
  found="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log")"
  n_crash=0
  if [ "$rc" -ne 0 ]; then
    n_crash=1
    crashed+=("$t: ${found:-exit $rc, no reproducer written; see $log}")
  fi
  # libFuzzer's own corpus (the units it keeps, from its last status line) and the files on disk,
  # which only grow: `scripts/fuzz.sh minimize <target>` merges them down.
  kept="$(grep -o 'corp: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)"
  size="$(find "$corpus" -type f | wc -l)"
  bytes="$(du -sk "$corpus" | cut -f1)"
  line="$(printf '%-15s %5ss  execs %11s  execs/s %7s  crashes %d  corpus %6s units (%s files, %s KB on disk)' \
    "$t" "$seconds" "${execs:-?}" "${rate:-?}" "$n_crash" "${kept:-?}" "$size" "$bytes")"
  summary+=("$line")
  printf '%s\t%s\n' "$(date -u +%FT%TZ)" "$line" >>"$fuzz/logs/summary.tsv"
  echo "$line"
done

echo
echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
if [ "${#crashed[@]}" -gt 0 ]; then
  echo "fuzz: CRASHES (reproduce with scripts/fuzz.sh repro <target> <file>):" >&2
  printf '  %s\n' "${crashed[@]}" >&2
  exit 1
fi
