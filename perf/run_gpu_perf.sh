#!/usr/bin/env bash
# GPU measurements for issues 2 and 6 (random weights of the full architecture), in two parts of < 10 min each:
#   perf/run_gpu_perf.sh tiers    # emulated 12/16/24 GB cards through real Serve  -> $OUT/tiers.json
#   perf/run_gpu_perf.sh levers   # eager vs compiled, numerics, cold start with/without cache -> $OUT/levers*.json
#   perf/run_gpu_perf.sh latency  # cold start (empty/warm cache) + served p50 at concurrency 1 -> $OUT/
#   perf/run_gpu_perf.sh levers2  # + kernel-time profile, VAE conv tuning, opt-in FP8, max-autotune -> $OUT/levers*.json
#   perf/run_gpu_perf.sh fp8rowwise  # real-length encode, new-size recompiles, the service's FP8 DiT -> $OUT/levers*
#   perf/run_gpu_perf.sh latency2    # FP8 cold start, concurrency-1 latency FP8 and bf16 -> $OUT/
#   perf/run_gpu_perf.sh levers3     # FP8 in-process at batch 1/8/12, compiled text encoder, bs-1 profile -> $OUT/
#   perf/run_gpu_perf.sh served3     # one FP8 service as a user runs it: throughput 8/12, latency PNG/JPEG -> $OUT/
#   perf/run_gpu_perf.sh levers4     # FP8 in-process at batch 1/8/12, text encoder as CUDA graphs, bs-1 profiles -> $OUT/
#   perf/run_gpu_perf.sh encoder_check  # the Generator's start-up text-encoder check on a GPU + te_graphs deviations -> $OUT/
# levers3 then served3 on one machine: the service starts from the Inductor cache levers3 filled.
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
  levers2)  # issue 6, second round: profile of the compiled DiT, VAE conv tuning, opt-in FP8, Inductor autotune
    timeout 380 python -m perf.levers --out "$OUT/levers.json" --batch 1 8 \
      --levers runner compile_real_rope profile vae_fast fp8 profile > "$OUT/levers.log" 2>&1 || echo "levers exit $?"
    timeout 170 python -m perf.levers --out "$OUT/levers_autotune.json" --batch 8 --levers compile_autotune \
      > "$OUT/levers_autotune.log" 2>&1 || echo "autotune exit $?" ;;
  fp8probe)  # where FP8 went NaN (eager FP8, no compile), then the VAE decoder compiled
    timeout 200 python -m perf.levers --out "$OUT/levers_fp8_eager.json" --batch 1 --levers runner fp8_eager \
      > "$OUT/levers_fp8_eager.log" 2>&1 || echo "fp8 exit $?"
    timeout 300 python -m perf.levers --out "$OUT/levers_vae_compile.json" --batch 1 8 \
      --levers runner compile_real_rope vae_compile profile > "$OUT/levers_vae_compile.log" 2>&1 || echo "vae exit $?" ;;
  fp8)  # the kept levers, then opt-in FP8 on top (with the all-zero-row fix), and where the time goes after it
    timeout 560 python -m perf.levers --out "$OUT/levers_fp8.json" --batch 8 \
      --levers runner compile_real_rope vae_compile profile fp8 profile > "$OUT/levers_fp8.log" 2>&1 || echo "fp8 exit $?" ;;
  latency)  # cold start with the kept levers (empty, then warm Inductor cache), then served latency at concurrency 1
    rm -rf /tmp/zimage-cold-cache
    timeout 150 python -m perf.cold_start --cache-dir /tmp/zimage-cold-cache --out "$OUT/cold_start_empty_cache.json"
    timeout 120 python -m perf.cold_start --cache-dir /tmp/zimage-cold-cache --out "$OUT/cold_start_warm_cache.json"
    timeout 300 python -m bench sweep --launch bench/configs/h100_random_full.yaml --grid 1024=1 --grid 512=1 \
      --clients-per-batch 1 --batches 20 --min-requests 20 --out "$OUT/concurrency1" > "$OUT/concurrency1.log" 2>&1 \
      || echo "sweep exit $?" ;;
  fp8static)  # opt-in FP8 candidate with static shapes at batch 8, against its own eager row
    timeout 560 python -m perf.levers --out "$OUT/levers_fp8_static.json" --batch 8 \
      --levers runner fp8_static profile > "$OUT/levers_fp8_static.log" 2>&1 || echo "fp8static exit $?" ;;
  fp8rowwise)  # real-length text encoding, new-size recompiles, then the service's opt-in FP8 (deployments.pipeline.fp8)
    TORCH_LOGS=recompiles timeout 560 python -m perf.levers --out "$OUT/levers_fp8_rowwise.json" --batch 1 8 \
      --levers runner encode_padding compile_real_rope vae_compile new_sizes profile fp8_rowwise profile \
      > "$OUT/levers_fp8_rowwise.log" 2>&1 || echo "fp8rowwise exit $?" ;;
  latency2)  # cold start of the FP8 service (empty, then warm cache), then served latency at concurrency 1, FP8 then bf16
    rm -rf /tmp/zimage-cold-cache-fp8
    for c in empty warm; do
      timeout 150 python -m perf.cold_start --fp8 --cache-dir /tmp/zimage-cold-cache-fp8 \
        --out "$OUT/cold_start_fp8_${c}_cache.json" || echo "cold start exit $?"
    done
    for cfg in h100_random_full_fp8 h100_random_full; do
      timeout 200 python -m bench sweep --launch "bench/configs/$cfg.yaml" --grid 1024=1 --grid 512=1 \
        --clients-per-batch 1 --batches 20 --min-requests 20 --out "$OUT/concurrency1-$cfg" \
        > "$OUT/concurrency1-$cfg.log" 2>&1 || echo "sweep $cfg exit $?"
    done ;;
  levers3)  # the in-process reference for served3 (same graphs, same cache dir), then the compiled text encoder
    TORCHINDUCTOR_CACHE_DIR=/tmp/zimage-inductor-cache-fp8 timeout 560 python -m perf.levers \
      --out "$OUT/levers_te_compile.json" --batch 1 8 12 --profile-batch 1 \
      --levers runner fp8_rowwise te_compile profile > "$OUT/levers_te_compile.log" 2>&1 || echo "levers3 exit $?" ;;
  levers4)  # the text encoder replayed as CUDA graphs (deployments/pipeline/text_encoder.py) on top of the FP8 service's levers
    TORCHINDUCTOR_CACHE_DIR=/tmp/zimage-inductor-cache-fp8 timeout 500 python -m perf.levers \
      --out "$OUT/levers_te_graphs.json" --batch 1 8 12 --profile-batch 1 \
      --levers ${LEVERS4:-runner fp8_rowwise te_graphs profile cpu_profile} > "$OUT/levers_te_graphs.log" 2>&1 || echo "levers4 exit $?" ;;
  encoder_check)  # does the start-up check keep the graphs on a GPU (deviation at the real length vs the tolerance)?
    timeout 150 python - > "$OUT/generator_encoder.log" 2>&1 <<'PY' || echo "generator check exit $?"
import json, logging, os
logging.basicConfig(level=logging.INFO)
from deployments.config import AppConfig
from deployments.generator import ENCODER_TOLERANCE, ZImageGenerator
cfg = AppConfig.model_validate(dict(model="random:full", device="cuda", dtype="bfloat16", measure_memory=False))
gen = ZImageGenerator(cfg.model_dump(mode="json"))
gen.reconfigure({})
info = {"tolerance": ENCODER_TOLERANCE, **gen.info()["text_encoder"]}
print(json.dumps(info))
json.dump(info, open(os.path.join(os.environ.get("OUT", "perf-out"), "generator_encoder.json"), "w"), indent=2)
PY
    timeout 240 python -m perf.levers --out "$OUT/levers_te_check.json" --batch 1 8 --levers te_graphs \
      > "$OUT/levers_te_check.log" 2>&1 || echo "te_graphs exit $?" ;;
  served3)  # `ray start` + `serve deploy` (as in the README), production batching (max 12, wait 0.05 s), then rows
    cfg="$OUT/served3_config.yaml"; url=http://127.0.0.1:8000
    python - "${BENCH_CONFIG:-bench/configs/h100_random_full_fp8.yaml}" "$cfg" <<'PY'
import os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
app = cfg["applications"][0]
gen = next(d for d in app["deployments"] if d["name"] == "Generator")
gen["user_config"].update(max_batch_size=int(os.environ.get("PROD_BATCH", "12")), batch_wait_timeout_s=0.05)
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
    python -m ray.scripts.scripts start --head --num-gpus "${NUM_GPUS:-1}" --dashboard-host 127.0.0.1 \
      --disable-usage-stats > "$OUT/ray_start.log" 2>&1
    # deploy as `serve deploy` does (Serve REST API), with the token `ray start` wrote (Ray 2.60's CLI needs
    # RAY_AUTH_MODE=token to find it; bench's ServeControl looks for it itself)
    python -c "import json, sys, yaml; from bench.serve_control import ServeControl
c = ServeControl('http://127.0.0.1:8265', sys.argv[1]); c.deploy(yaml.safe_load(open(sys.argv[2])))
json.dump(c.wait_ready(420), open(sys.argv[3], 'w'), indent=2)" "$url" "$cfg" "$OUT/ready_info.json" \
      > "$OUT/serve_deploy.log" 2>&1 || echo "service not ready"
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
    [[ "${PROD_BATCH_ROW:-1}" == 0 ]] || timeout 90 python -m bench run --url "$url" --size "$size" --concurrency 1 --requests 20 --warmup-requests 2 \
      --out "$OUT/c1-prodbatch-png" > "$OUT/c1-prodbatch-png.log" 2>&1 || echo "c1 prod exit $?"
    python -m ray.scripts.scripts stop > /dev/null 2>&1 || true ;;
  *) echo "usage: $0 tiers|levers|levers2|fp8probe|fp8|latency|fp8static|fp8rowwise|latency2|levers3|served3|levers4|encoder_check" >&2
     exit 2 ;;
esac
