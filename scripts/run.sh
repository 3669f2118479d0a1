#!/usr/bin/env bash
# `make run`: the node itself, `cxr-node serve` (DICOM on 11112, HTTP on 8000), until Ctrl-C
# or SIGTERM. `make predict`: one-shot `cxr-node predict` on the NEMA CR chest radiograph.
# MODEL=FILE or named weights; without it, an UNTRAINED demo model (plumbing only).
# CONFIG=FILE: a TOML config (see docs/cxr-node.example.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:-serve}
model=${MODEL:-}
if [ -z "$model" ]; then
  model=.cache/demo-model/untrained-demo.pt
  [ -f "$model" ] || .venv/bin/cxr-node demo-model "$model"
  echo "run: no MODEL given: using an UNTRAINED demo model ($model); pass MODEL=FILE" >&2
fi
if [ "$job" = predict ]; then
  input=$(.venv/bin/python -c "from pydicom.data import get_testdata_file as g; print(g('RG1_UNCR.dcm'))")
  exec .venv/bin/cxr-node predict "$input" --model "$model" --out "${OUT:-out}"
fi
exec .venv/bin/cxr-node -v serve --model "$model" ${CONFIG:+--config "$CONFIG"} \
  --spool "${SPOOL:-spool}"
