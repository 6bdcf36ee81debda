#!/usr/bin/env bash
# GPU experiments (random weights of the full architecture), each part < 10 min; results under $OUT (default perf-out).
#   perf/run_gpu_perf.sh lever <name> [args]  # one lever of `python -m perf list` -> $OUT/<name>.json (+ .log)
#   perf/run_gpu_perf.sh tiers                # emulated 12/16/24 GB cards through real Serve, 1024²..2048² -> tiers.json
#   perf/run_gpu_perf.sh cold_start           # build + compile + first image, empty then warm Inductor cache
#   perf/run_gpu_perf.sh cold_start_fp8       # the same for the opt-in FP8 DiT
#   perf/run_gpu_perf.sh served_latency       # served p50 at concurrency 1 (1024 and 512), bf16 and FP8 configs
#   perf/run_gpu_perf.sh served_production    # `ray start` + `serve deploy`, production batching: throughput at
#                                             # batch 8/12, latency PNG/JPEG at concurrency 1
#   perf/run_gpu_perf.sh encoder_check        # the engine's start-up text-encoder check on a GPU + te_graphs
#   perf/run_gpu_perf.sh latency_study        # serve_config.yaml (one replica, random weights) with both batch
#                                             # policies: 1024² at 80% of capacity (REQUESTS=300 each), 512² and
#                                             # a 5-preset mix at saturation (> 10 min: run it under setsid;
#                                             # PARTS="big small mix" picks which, e.g. PARTS=small)
# Run `lever fp8 --batch 1 8 12` before served_production on one machine to fill the Inductor cache it starts from:
# levers use $CACHE, the default of which is bench/configs/random_full_fp8.yaml's compile_cache_dir.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-perf-out}; mkdir -p "$OUT"
CACHE=${CACHE:-/tmp/zimage-inductor-cache-fp8}
mode=${1:-}; shift || true

# `ray start`, then the config deployed as `serve deploy` does (Serve REST API, with the token `ray start` wrote);
# /info of the ready service -> $OUT/ready_info.json.   start_and_deploy CONFIG URL READY_TIMEOUT_S
start_and_deploy() {
  python -m ray.scripts.scripts start --head --num-gpus "${NUM_GPUS:-1}" \
    --dashboard-host 127.0.0.1 --disable-usage-stats > "$OUT/ray_start.log" 2>&1
  python -c "import json, sys, yaml; from bench.serve_control import ServeControl
c = ServeControl('http://127.0.0.1:8265', sys.argv[1]); c.deploy(yaml.safe_load(open(sys.argv[2])))
json.dump(c.wait_ready(float(sys.argv[4])), open(sys.argv[3], 'w'), indent=2)" "$2" "$1" "$OUT/ready_info.json" "$3" \
    > "$OUT/serve_deploy.log" 2>&1 || echo "service not ready"
}
case "$mode" in
  lever)
    name=$1; shift
    TORCHINDUCTOR_CACHE_DIR=$CACHE TORCH_LOGS=${TORCH_LOGS:-recompiles} timeout 580 \
      python -m perf run "$name" --out "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1 || echo "$name exit $?" ;;
  tiers)
    timeout 560 python -m perf.emulate_tiers --out "$OUT/tiers.json" > "$OUT/tiers.log" 2>&1 ;;
  cold_start|cold_start_fp8)
    flag=(); [[ $mode == cold_start_fp8 ]] && flag=(--fp8)
    rm -rf "/tmp/zimage-cold-cache-$mode"
    for c in empty warm; do
      timeout 150 python -m perf.cold_start "${flag[@]}" --cache-dir "/tmp/zimage-cold-cache-$mode" \
        --out "$OUT/${mode}_${c}_cache.json" || echo "cold start exit $?"
    done ;;
  served_latency)
    for cfg in random_full_bf16 random_full_fp8; do
      timeout 280 python -m bench sweep --launch "bench/configs/$cfg.yaml" --grid 1024=1 --grid 512=1 \
        --clients-per-batch 1 --batches 20 --min-requests 20 --out "$OUT/concurrency1-$cfg" \
        > "$OUT/concurrency1-$cfg.log" 2>&1 || echo "sweep $cfg exit $?"
    done ;;
  encoder_check)  # does the start-up check keep the graphs on a GPU (deviation at the real length vs the tolerance)?
    timeout 150 python - > "$OUT/engine_encoder.log" 2>&1 <<'PY' || echo "engine check exit $?"
import json, logging, os
logging.basicConfig(level=logging.INFO)
from deployments.config import AppConfig
from deployments.generator import ZImageGenerator
from deployments.pipeline.text_encoder_check import TOLERANCE
cfg = AppConfig.model_validate(
    dict(model="random:full", device="cuda", dtype="bfloat16", testing={"measure_memory": False})
)
gen = ZImageGenerator(cfg.model_dump(mode="json"))
gen.reconfigure({})
info = {"tolerance": TOLERANCE, **gen.info()["text_encoder"]}
print(json.dumps(info))
json.dump(info, open(os.path.join(os.environ.get("OUT", "perf-out"), "engine_encoder.json"), "w"), indent=2)
PY
    timeout 240 python -m perf run te_graphs --batch 1 8 --out "$OUT/te_graphs.json" \
      > "$OUT/te_graphs.log" 2>&1 || echo "te_graphs exit $?" ;;
  served_production)  # production batching (max 12, wait 0.05 s) as a user deploys it, then rows
    cfg="$OUT/served_config.yaml"; url=http://127.0.0.1:8000
    python - "${BENCH_CONFIG:-bench/configs/random_full_fp8.yaml}" "$cfg" <<'PY'
import os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
app = cfg["applications"][0]
gen = next(d for d in app["deployments"] if d["name"] == "Generator")
gen["user_config"].update(max_batch_size=int(os.environ.get("PROD_BATCH", "12")), batch_wait_timeout_s=0.05)
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
    start_and_deploy "$cfg" "$url" 420
    sweep=(python -m bench sweep --url "$url" --config "$cfg")
    size=${SIZE:-1024}
    if [[ "${THROUGHPUT_BATCHES:-8,12}" != none ]]; then  # THROUGHPUT_BATCHES=none: latency rows only
      timeout 240 "${sweep[@]}" --grid "$size=${THROUGHPUT_BATCHES:-8,12}" --batches 8 --out "$OUT/throughput" \
        > "$OUT/throughput.log" 2>&1 || echo "throughput exit $?"
    fi
    for fmt in png jpeg; do  # max_batch_size 1 per row: no batch wait, the floor of a request's latency
      timeout 90 "${sweep[@]}" --grid "$size=1" --clients-per-batch 1 --batches 20 --min-requests 20 \
        --output-format "$fmt" --out "$OUT/c1-$fmt" > "$OUT/c1-$fmt.log" 2>&1 || echo "c1 $fmt exit $?"
    done
    # a lone request at the production batch size: it waits batch_wait_timeout_s for company that never comes
    [[ "${PROD_BATCH_ROW:-1}" == 0 ]] || timeout 90 python -m bench run --url "$url" --size "$size" --concurrency 1 \
      --requests 20 --warmup-requests 2 --out "$OUT/c1-prodbatch-png" > "$OUT/c1-prodbatch-png.log" 2>&1 \
      || echo "c1 prod exit $?"
    python -m ray.scripts.scripts stop > /dev/null 2>&1 || true ;;
  latency_study)  # SMOKE=1: serve_config.cpu.yaml with the tiny model, to check the script on a CPU
    cfg="$OUT/study_config.yaml"; url=http://127.0.0.1:8000; dash=http://127.0.0.1:8265
    base=serve_config.yaml; [[ "${SMOKE:-0}" == 1 ]] && base=serve_config.cpu.yaml
    python - "$base" "$cfg" "${SMOKE:-0}" <<'PY'
import os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["http_options"]["host"] = "127.0.0.1"
app = cfg["applications"][0]
if sys.argv[3] != "1":
    app["args"]["model"] = "random:full"  # timing and memory of the real model, noise images
if os.environ.get("WARM_UP"):  # e.g. 1024x1024,512x512: a shorter start than every preset's warm-up
    app["args"]["warm_up_sizes"] = os.environ["WARM_UP"].split(",")
gen = next(d for d in app["deployments"] if d["name"] == "Generator")
gen.pop("autoscaling_config", None)  # one replica: both policies measured on the same GPU
gen["num_replicas"] = 1
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
    start_and_deploy "$cfg" "$url" 600
    n=${REQUESTS:-300}; small=${SMALL_SIZE:-512}; big=${SIZE:-1024}
    cap=(python -m bench capacity --url "$url" --dashboard "$dash" --output-format jpeg --p99-target-s 10
         --target-rate 5 --variant new='{"batch_policy": "latency"}' --variant old='{"batch_policy": "throughput"}'
         --rates-from old)  # old measured first; both policies get the same arrivals
    parts=" ${PARTS:-big small mix} "  # e.g. PARTS=small: only 512² (~6 min with the start)
    [[ $parts == *" big "* ]] && { "${cap[@]}" --workload single --size "$big" --loads 0.8 --requests-per-load "$n" \
      --capacity-requests "${CAP_REQUESTS:-36}" --out "$OUT/single_$big" > "$OUT/single_$big.log" 2>&1 \
      || echo "single $big exit $?"; }
    [[ $parts == *" small "* ]] && { "${cap[@]}" --workload single --size "$small" --loads 0.8 \
      --requests-per-load "${SMALL_REQUESTS:-60}" --capacity-requests "${SMALL_CAP_REQUESTS:-96}" \
      --out "$OUT/single_$small" > "$OUT/single_$small.log" 2>&1 || echo "single $small exit $?"; }
    # five 1024-class presets (the issue's mix: five aspect ratios), 2 x 12 clients at saturation
    [[ $parts == *" mix "* ]] && { "${cap[@]}" --workload mix --loads 0.8 \
      --shapes ${MIX_SHAPES:-1024x1024 1152x896 896x1152 1248x832 832x1248} --requests-per-load "${MIX_REQUESTS:-24}" \
      --capacity-requests "${MIX_CAP_REQUESTS:-48}" --out "$OUT/mix" > "$OUT/mix.log" 2>&1 || echo "mix exit $?"; }
    python -m ray.scripts.scripts stop > /dev/null 2>&1 || true ;;
  *) echo "usage: $0 lever <name> [args]|tiers|cold_start|cold_start_fp8|served_latency|served_production|encoder_check|latency_study" >&2
     exit 2 ;;
esac
