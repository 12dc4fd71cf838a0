#!/usr/bin/env bash
# Creates (once) the Python virtual environment for the generated-client tests and the contract
# check, and prints its path. Re-running is cheap: a stamp records the installed requirements.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${CPIS_TEST_VENV:-$root/target/venv-interop}"
req="$root/tests/interop/requirements.txt"
stamp="$venv/.installed-$(sha256sum "$req" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv" >&2
  # `python -m pip`, not the `pip` script: a venv copied from another checkout keeps a script
  # whose first line names the other checkout's interpreter.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$stamp"
fi
echo "$venv"
