#!/usr/bin/env bash
# The device check of the batched engine (issue 9), for one GPU machine with no network.
# Carry the wheels built per ../shared/gpu/README.md (.whl) and run from the repo root:
#     bash benchmarks/gpu_check.sh            # writes its figures to $OUT (or /tmp/gpu_check)
# It stops itself within 6.5 minutes: every step has its own timeout, and a failed step is
# reported and skipped. Figures: gpu.txt, parity.txt, run10k.txt, bench.md/.csv, log.txt.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
T0=$(date +%s)
left() { echo $((390 - ($(date +%s) - T0))); }  # seconds left of the 6.5-minute budget
step() { local secs=$1; shift; local cap; cap=$(left); [ "$cap" -lt "$secs" ] && secs=$cap
         [ "$secs" -le 5 ] && { echo "SKIPPED (no time left): $*"; return 1; }
         echo "== $* (timeout ${secs}s)"; timeout "$secs" "$@" || echo "FAILED or timed out ($?): $*"; }

source benchmarks/gpu_setup.sh || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/gpu.txt"
PK="python3 -m simulations.cli"

# 1. The same tiny run on the GPU and on the CPU: the engines' numbers must agree.
for dev in cuda cpu; do
  step 90 $PK run data=digits num_clients=3 rounds=2 engine.device=$dev out=/tmp/parity-$dev
done
python3 - <<'EOF' | tee "$OUT/parity.txt"
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
step 230 $PK run $W10K measure_agreement=false engine.device=cuda out=/tmp/run10k > /tmp/run10k.log 2>&1
grep -E "round (1|2|10|20)/|accuracy mean|FAILED|Error" /tmp/run10k.log | tee "$OUT/run10k.txt"
python3 -c "
import json; s = json.load(open('/tmp/run10k/summary.json'))
print({k: s.get(k) for k in ('engine', 'device', 'chunk', 'acc_mean', 'acc_worst', 'wall_s', 'peak_rss_mb', 'peak_gpu_mb')})
" | tee -a "$OUT/run10k.txt"

# 3. Bench: the batched engine on the GPU against the plain loop (loop only where it fits the budget).
step 60 $PK bench "sizes=[100]" "variants=[batched]" rounds=5 engine.device=cuda out=/tmp/bench-a
step 90 $PK bench "sizes=[1000]" "variants=[batched]" rounds=5 engine.device=cuda out=/tmp/bench-b
cat /tmp/bench-a/bench.md /tmp/bench-b/bench.md > "$OUT/bench.md" 2>/dev/null
cat /tmp/bench-a/bench.csv /tmp/bench-b/bench.csv > "$OUT/bench.csv" 2>/dev/null
echo "gpu_check: done in $(( $(date +%s) - T0 )) s"
