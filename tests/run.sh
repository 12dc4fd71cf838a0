#!/usr/bin/env bash
# The test command (README.md): builds the binaries the cross-service tests start, prepares the
# Python environment for the generated-client tests, then runs the Python interop suite and
# every Rust test. Storage tests also run on PostgreSQL and Redis when CPIS_TEST_POSTGRES_URL
# and CPIS_TEST_REDIS_URL are set (.ci/run sets both).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(bash tests/interop/setup-venv.sh)"
cargo build --workspace --bins
echo "== Python generated-client and stock-client tests"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/interop
# The alert rules' tests (tests/tests/alerts.rs) need promtool; under CI a missing one fails
# them, so install it here where the machine allows.
if [ "${CI:-}" = "true" ] && ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  apt-get install -y --no-install-recommends prometheus >/dev/null ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends prometheus >/dev/null; } ||
    echo "could not install promtool: the alert rule test will fail"
fi
echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
