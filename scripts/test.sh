#!/usr/bin/env bash
# Sets up what is missing, then runs the whole test suite (unit and integration:
# the fixtures start mosquitto, VictoriaMetrics, InfluxDB 1.x and pymodbus servers
# on free loopback ports in temporary folders and stop them afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$rc"
