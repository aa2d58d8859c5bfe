#!/usr/bin/env bash
# mypy over the whole meter_gateway package. Its subpackages are the top-level folders
# (pyproject's package-dir), so mypy reads them through a tree of links,
# build/typecheck/meter_gateway/<folder> -> <folder>, where they have their real names.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=build/typecheck
rm -rf "$stage"
mkdir -p "$stage/meter_gateway"
for f in meter_gateway/*.py meter_gateway/py.typed; do
    ln -s "$PWD/$f" "$stage/meter_gateway/$(basename "$f")"
done
for folder in config gateway protocols simulators storage; do
    ln -s "$PWD/$folder" "$stage/meter_gateway/$folder"
done
cd "$stage"
exec ../../.venv/bin/python -m mypy --config-file ../../pyproject.toml --cache-dir ../mypy-cache -p meter_gateway "$@"
