#!/usr/bin/env bash
# The GPU benchmark in two parts that each fit one 10-minute command:
#   bench/run_gpu.sh serve      # private Ray cluster + Serve (bench/configs/random_full_bf16.yaml), live batch sweep
#   bench/run_gpu.sh baseline   # in-process diffusers at the same sizes, then the serve-vs-baseline report
#   bench/run_gpu.sh all        # both, then the report (needs ~12 min)
#   bench/run_gpu.sh report     # only the report, from $OUT/serve and $OUT/baseline (or the state dir)
# Add --smoke (or BENCH_SMOKE=1) to run the same path on CPU with the tiny random model in ~2 minutes.
# BENCH_CONFIG=bench/configs/random_full_fp8.yaml benchmarks the opt-in FP8 service instead; BENCH_SERVE_GRID
# and BENCH_BASELINE_GRID (e.g. "1024=1,8,16 512=8") replace the serve / baseline part's grid.
# Results go to $OUT (default ./bench-out): serve/, baseline/, report/. The serve JSON is also kept in
# $BENCH_STATE_DIR (default /tmp/zimage-bench) so a later `baseline` call on the same machine can build the report.
set -euo pipefail
cd "$(dirname "$0")/.."

PART=all
SMOKE=${BENCH_SMOKE:-0}
for arg in "$@"; do
  case "$arg" in
    serve|baseline|report|all) PART=$arg ;;
    --smoke) SMOKE=1 ;;
    *) echo "usage: $0 [serve|baseline|report|all] [--smoke]" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-bench-out}
STATE=${BENCH_STATE_DIR:-/tmp/zimage-bench}
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$STATE"

if [[ "$SMOKE" == 1 ]]; then
  CONFIG=bench/configs/cpu_smoke.yaml
  SERVE_GRID=(--grid 256=1,2,4 --grid 512=1,2)
  BASE_GRID=(--grid 256=1,2,4 --grid 512=1,2)
  MODEL=random:tiny; DEVICE=cpu
  HTTP_PORT=${ZIMAGE_TEST_HTTP_PORT:-18200}; DASH_PORT=${BENCH_DASHBOARD_PORT:-18265}; CPUS=(--num-cpus 4)
  SERVE_BUDGET=120; BASE_BUDGET=60; ROW_TIMEOUT=60; PART_TIMEOUT=300
else
  CONFIG=${BENCH_CONFIG:-bench/configs/random_full_bf16.yaml}
  # 1024^2: ~1.3 s/img on an H100 -> 3 measured batches per row is ~200 s for all rows; 512^2 rows ~40 s.
  SERVE_GRID=(--grid 1024=1,2,4,6,8,12,16 --grid 512=1,2,4,8,16)
  if [[ -n "${BENCH_SERVE_GRID:-}" ]]; then
    SERVE_GRID=(); for g in $BENCH_SERVE_GRID; do SERVE_GRID+=(--grid "$g"); done
  fi
  BASE_GRID=(--grid 1024=1,2,4,6,8,12,16 --grid 512=1,2,4,8,16)
  if [[ -n "${BENCH_BASELINE_GRID:-}" ]]; then
    BASE_GRID=(); for g in $BENCH_BASELINE_GRID; do BASE_GRID+=(--grid "$g"); done
  fi
  MODEL=random:full; DEVICE=cuda
  HTTP_PORT=${BENCH_HTTP_PORT:-8000}; DASH_PORT=${BENCH_DASHBOARD_PORT:-8265}; CPUS=()
  SERVE_BUDGET=${BENCH_SERVE_BUDGET_S:-330}; BASE_BUDGET=${BENCH_BASELINE_BUDGET_S:-210}; ROW_TIMEOUT=150
  PART_TIMEOUT=560   # under the machine's 10-minute limit: results so far are saved after every row
fi

log() { echo "[run_gpu.sh $(date +%H:%M:%S)] $*" >&2; }

preflight() {
  log "part=$PART smoke=$SMOKE out=$OUT config=$CONFIG"
  "$PY" - "$DEVICE" <<'PY' 2>&1 | tee "$OUT/preflight.txt"
import importlib, importlib.metadata as md, sys
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for p in ("diffusers", "transformers", "ray", "aiohttp", "nvidia-ml-py", "pynvml", "matplotlib", "tqdm", "rich"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "not installed")
for mod in ("aiohttp", "httpx", "matplotlib", "tqdm", "rich", "yaml", "pynvml", "ray.serve", "diffusers"):
    importlib.import_module(mod)  # fail here, not halfway through the sweep
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient  # noqa: F401  (live reconfigure needs it)
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    print("gpu", torch.cuda.get_device_name(0), round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1), "GiB")
PY
  if [[ "$DEVICE" == cuda ]]; then nvidia-smi >> "$OUT/preflight.txt" 2>&1 || true; fi
}

run_serve() {
  log "serve sweep -> $OUT/serve (budget ${SERVE_BUDGET}s of rows)"
  local rc=0
  timeout -s INT -k 30 "$PART_TIMEOUT" "$PY" -m bench sweep --launch "$CONFIG" \
    --http-port "$HTTP_PORT" --dashboard-port "$DASH_PORT" ${CPUS[@]+"${CPUS[@]}"} "${SERVE_GRID[@]}" \
    --steps 8 --batches 3 --warmup-batches 1 --warmup-steps 1 --min-requests 4 --clients-per-batch 2 \
    --row-timeout-s "$ROW_TIMEOUT" --budget-s "$SERVE_BUDGET" --timeout-s 300 --out "$OUT/serve" || rc=$?
  if [[ -f "$OUT/serve/serve_sweep.json" ]]; then cp "$OUT/serve/serve_sweep.json" "$STATE/serve_sweep.json"; fi
  log "serve sweep exit code $rc"
  return $rc
}

wait_gpu_free() {  # the serve part's replica must have released its ~40 GB before the baseline builds its model
  [[ "$DEVICE" == cuda ]] || return 0
  for _ in $(seq 60); do
    [[ -z "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null)" ]] && return 0
    sleep 1
  done
  log "warning: GPU still has compute processes: $(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader)"
}

run_baseline() {
  wait_gpu_free
  log "in-process baseline -> $OUT/baseline (budget ${BASE_BUDGET}s of rows)"
  local rc=0
  timeout -s INT -k 30 "$PART_TIMEOUT" "$PY" -m bench baseline --model "$MODEL" --device "$DEVICE" "${BASE_GRID[@]}" \
    --steps 8 --repeats 2 --warmup 1 --warmup-steps 1 --budget-s "$BASE_BUDGET" --out "$OUT/baseline" || rc=$?
  if [[ -f "$OUT/baseline/baseline.json" ]]; then cp "$OUT/baseline/baseline.json" "$STATE/baseline.json"; fi
  log "baseline exit code $rc"
  return $rc
}

run_report() {
  local serve="$OUT/serve/serve_sweep.json" base="$OUT/baseline/baseline.json"
  [[ -f "$serve" ]] || serve="$STATE/serve_sweep.json"
  [[ -f "$base" ]] || base="$STATE/baseline.json"
  if [[ -f "$serve" && -f "$base" ]]; then
    log "report: $serve + $base -> $OUT/report"
    "$PY" -m bench report --serve "$serve" --baseline "$base" --out "$OUT/report"
  else
    log "report skipped: need both $serve and $base (run: python -m bench report --serve S --baseline B --out DIR)"
  fi
}

preflight
rc=0
case "$PART" in
  serve) run_serve || rc=$? ;;
  baseline) run_baseline || rc=$?; run_report || rc=$? ;;
  report) run_report || rc=$? ;;
  all) run_serve || rc=$?; run_baseline || rc=$?; run_report || rc=$? ;;
esac
log "done (exit $rc); files:"; find "$OUT" -maxdepth 2 -type f | sort >&2
exit $rc
