#!/usr/bin/env bash
# The device check of the batched engine (issues 9 and 19), for one GPU machine with no network.
# Carry the wheels built per ../shared/gpu/README.md (.whl) and run from the repo root:
#     bash benchmarks/gpu_check.sh            # writes its figures to $OUT (or /tmp/gpu_check)
# It stops itself within 8 minutes: every step has its own timeout, and a failed step is
# reported and skipped. Figures: gpu.txt, parity.txt, run10k.txt, run100k.txt, bench.md/.csv,
# profile10k.txt (cProfile of 3 rounds at 10,000 students: where the GPU run's time goes), log.txt.
# Issue 19's targets: 10,000 x 20 rounds < 20 s all-in; 100,000 x 20 < 3 minutes.
# A shorter check: GPU_CHECK_STEPS="run10k run100k" GPU_CHECK_100K_ROUNDS=3 bash benchmarks/gpu_check.sh
# (steps: parity run10k profile run100k bench; all by default; GPU_CHECK_BUDGET_S: the time budget, 470 s).
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}  # seconds: the 8-minute budget less 10 s to write up
left() { echo $((BUDGET - ($(date +%s) - T0))); }
step() { local secs=$1; shift; local cap; cap=$(left); [ "$cap" -lt "$secs" ] && secs=$cap
         [ "$secs" -le 5 ] && { echo "SKIPPED (no time left): $*"; return 1; }
         echo "== $* (timeout ${secs}s)"; local t=$(date +%s.%N)
         timeout "$secs" "$@" || echo "FAILED or timed out ($?): $*"
         echo "-- all-in (process start to exit): $(python3 -c "import time; print(round(time.time() - $t, 1))") s"; }

source benchmarks/gpu_setup.sh || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/gpu.txt"
PK="python3 -m simulations.cli"
STEPS=" ${GPU_CHECK_STEPS:-parity run10k profile run100k bench} "
want() { [[ "$STEPS" == *" $1 "* ]]; }

# 1. The same tiny run on the GPU and on the CPU: the engines' numbers must agree.
want parity && for dev in cuda cpu; do
  step 90 $PK run data=digits num_clients=3 rounds=2 engine.device=$dev out=/tmp/parity-$dev
done
want parity && python3 - <<'EOF' | tee "$OUT/parity.txt"
import json
for dev in ("cuda", "cpu"):
    try:
        s = json.load(open(f"/tmp/parity-{dev}/summary.json"))
        print(dev, s["device"], "acc_mean", s["acc_mean"], "bytes", s["bytes_up"], s["bytes_down"])
    except OSError as e:
        print(dev, "no summary:", e)
EOF

# 2. The target: 10,000 mlp64 students x 20 rounds of peer on one GPU (synth, >= 24 private samples each).
W10K="strategy=peer data=synth data.size=420000 partition=iid num_clients=10000 rounds=20 data.test_frac=0.005 data.transfer_size=1000"
summarize() {  # the summary's engine fields and each round's time by section (peerkd.clock)
python3 -c "
import json, sys
s = json.load(open(sys.argv[1] + '/summary.json'))
print({k: s.get(k) for k in ('engine', 'device', 'chunk', 'store', 'acc_mean', 'acc_worst', 'wall_s', 'peak_rss_mb', 'peak_gpu_mb')})
for line in open(sys.argv[1] + '/metrics.jsonl'):
    r = json.loads(line)
    if r.get('type') == 'round' and r['round'] in (1, 2, 3, 10, 20):
        print(r['round'], round(r['round_s'], 2), {k[5:-2]: v for k, v in r.items() if k.startswith('time_')})
" "$1"
}
if want run10k; then
  step 180 $PK run $W10K measure_agreement=false engine.device=cuda out=/tmp/run10k > /tmp/run10k.log 2>&1
  grep -E "round (1|2|3|10|20)/|FAILED|Error|all-in" /tmp/run10k.log | tee "$OUT/run10k.txt"
  summarize /tmp/run10k | tee -a "$OUT/run10k.txt"
fi

# 3. Where the time goes: 3 rounds of the same world under cProfile (own and cumulative time).
if want profile; then
  step 90 python3 benchmarks/profile_run.py /tmp/profile10k.txt run ${W10K/rounds=20/rounds=3} measure_agreement=false \
      engine.device=cuda out=/tmp/prof10k quiet=true > /tmp/prof10k.log 2>&1
  cp /tmp/profile10k.txt "$OUT/profile10k.txt" 2>/dev/null
  summarize /tmp/prof10k >> "$OUT/profile10k.txt" 2>&1
fi

# 4. 100,000 students x 20 rounds: weights beyond what the GPU holds stay in host memory (store=host in the summary).
W100K="strategy=peer data=synth data.size=4200000 partition=iid num_clients=100000 data.test_frac=0.0005 data.transfer_size=1000"
if want run100k; then
  step 240 $PK run $W100K rounds=${GPU_CHECK_100K_ROUNDS:-20} measure_agreement=false engine.device=cuda out=/tmp/run100k \
      > /tmp/run100k.log 2>&1
  grep -E "round (1|2|3|10|20)/|FAILED|Error|all-in" /tmp/run100k.log | tee "$OUT/run100k.txt"
  summarize /tmp/run100k | tee -a "$OUT/run100k.txt"
fi

# 5. Bench with the floor columns (FLOPs, achieved GFLOP/s, the GPU's GEMM rate, time by section).
if want bench; then
  step 60 $PK bench "sizes=[1000]" "variants=[batched]" data=mnist5k partition=iid partition.min_size=2 \
      data.transfer_size=0 data.test_frac=0.2 rounds=5 engine.device=cuda out=/tmp/bench-a
  step 60 $PK bench "sizes=[10000]" "variants=[batched]" rounds=5 engine.device=cuda out=/tmp/bench-b
  cat /tmp/bench-a/bench.md /tmp/bench-b/bench.md > "$OUT/bench.md" 2>/dev/null
  cat /tmp/bench-a/bench.csv /tmp/bench-b/bench.csv > "$OUT/bench.csv" 2>/dev/null
fi
echo "gpu_check: done in $(( $(date +%s) - T0 )) s"
