#!/usr/bin/env bash
# Runs the Python client tests against the real gateway binary.
#
#   tests/python/run.sh [pytest args...]
#
# Makes (or reuses) a venv, installs requirements.txt into it, builds the
# `crossflow` binary unless CROSSFLOW_BIN names one, then runs pytest.
# pytest's exit code 5 ("no tests collected") is a failure here.
#
# Environment:
#   CROSSFLOW_BIN       binary to test (default: build target/debug/crossflow)
#   CROSSFLOW_PY_VENV   venv to use (default: target/python-venv, gitignored)
#   PYTHON              interpreter that makes the venv (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${CROSSFLOW_PY_VENV:-$root/target/python-venv}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "python-tests: creating venv $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi
echo "python-tests: pip install -r tests/python/requirements.txt"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt"

if [[ -z "${CROSSFLOW_BIN:-}" ]]; then
    echo "python-tests: cargo build -p crossflow-gateway --bin crossflow"
    (cd "$root" && cargo build -p crossflow-gateway --bin crossflow)
    export CROSSFLOW_BIN="$root/target/debug/crossflow"
fi

cd "$root"
rc=0
"$venv/bin/python" -m pytest tests/python "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "python-tests: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$rc"
