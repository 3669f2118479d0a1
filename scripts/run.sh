#!/usr/bin/env bash
# `make run`: the node's main job on a real radiograph. Until `serve` lands this is
# `cxr-node predict` on the NEMA CR chest radiograph that pydicom-data ships.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-}
out=${2:-out}
if [ -z "$model" ]; then
  model=.cache/demo-model/untrained-demo.pt
  [ -f "$model" ] || .venv/bin/cxr-node demo-model "$model"
  echo "run: no MODEL given: using an UNTRAINED demo model ($model); pass MODEL=FILE" >&2
fi
input=$(.venv/bin/python -c "from pydicom.data import get_testdata_file as g; print(g('RG1_UNCR.dcm'))")
exec .venv/bin/cxr-node predict "$input" --model "$model" --out "$out"
