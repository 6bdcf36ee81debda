#!/usr/bin/env bash
# GPU measurements for issues 2 and 6 (random weights of the full architecture), in two parts of < 10 min each:
#   perf/run_gpu_perf.sh tiers    # emulated 12/16/24 GB cards through real Serve  -> $OUT/tiers.json
#   perf/run_gpu_perf.sh levers   # eager vs compiled, numerics, cold start with/without cache -> $OUT/levers*.json
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-perf-out}; mkdir -p "$OUT"
case "${1:-}" in
  tiers)
    timeout 560 python -m perf.emulate_tiers --out "$OUT/tiers.json" > "$OUT/tiers.log" 2>&1 ;;
  levers)
    TORCH_LOGS=recompiles,graph_breaks timeout 330 python -m perf.levers --out "$OUT/levers.json" --batch 1 8 \
      --levers runner compile_dynamic compile_real_rope > "$OUT/levers.log" 2>&1 || echo "levers exit $?"
    rm -rf /tmp/zimage-cold-cache
    timeout 120 python -m perf.cold_start --cache-dir /tmp/zimage-cold-cache --out "$OUT/cold_start_empty_cache.json"
    timeout 120 python -m perf.cold_start --cache-dir /tmp/zimage-cold-cache --out "$OUT/cold_start_warm_cache.json" ;;
  *) echo "usage: $0 tiers|levers" >&2; exit 2 ;;
esac
