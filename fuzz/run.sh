#!/usr/bin/env bash
# Runs every fuzz target for a while: `bash fuzz/run.sh 30` (CI: 30 s each) or longer by hand,
# e.g. `bash fuzz/run.sh 1800`. Needs cargo-fuzz (installed here when missing). On the stable
# toolchain cargo-fuzz needs RUSTC_BOOTSTRAP for its -Z flags, and no sanitizer.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
mkdir -p corpus artifacts
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target" "seeds/$target"
  echo "== fuzz $target for ${seconds}s"
  log="$(mktemp)"
  if ! cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -max_len=512 -print_final_stats=1 >"$log" 2>&1; then
    grep -E "panicked|ERROR|SUMMARY|crash-|error" "$log" | head -40 || tail -40 "$log"
    echo "fuzz $target FAILED (a crash is kept under fuzz/artifacts/$target)"
    exit 1
  fi
  grep -E "^Done|stat::number_of_executed_units" "$log" || true
  rm -f "$log"
done
echo "fuzz: every target ran ${seconds}s without a failure"
