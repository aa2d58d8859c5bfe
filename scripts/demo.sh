#!/usr/bin/env bash
# Sets up what is missing, then runs the demo: broker, database, simulated meters and
# the gateway on this machine, ending with a summary. Arguments go to `meter-gateway demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/meter-gateway demo --duration 30 "$@"
