#!/usr/bin/env bash
# The GPU path, end to end, on a machine with CUDA (CI has none). Run from the checkout:
#   bash benchmarks/gpu_check.sh            # DEVICE=cuda (default) or DEVICE=cpu for a dry run
# Each step prints its last lines and its time; everything a step writes goes under $OUT
# (default: a temporary folder). Steps: the default job (TuNAS on uib, trained on the GPU,
# latency timed on the GPU with CUDA synchronisation), a short differentiable search, a
# fast LUT build timed on the GPU, and mixed-precision training (float16 with loss scaling).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute: the steps run from the checkout
export HWNAS_LUT_DIR="$OUT/luts"
cd "$(dirname "$0")/.."
python - <<PY || exit 1
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if "$DEVICE".startswith("cuda"):
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA here: this torch is a CPU build or the machine has no GPU")
    print(torch.cuda.get_device_name(0))
PY
failed=0
step() {
  local name=$1; shift
  local start=$EPOCHREALTIME
  if "$@" > "$OUT/$name.log" 2>&1; then status=ok; else status="FAILED ($?)"; failed=1; fi
  awk -v n="$name" -v s="$status" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "== %s: %s in %.1f s\n", n, s, b - a }'
  tail -n 4 "$OUT/$name.log" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 4
}
step default_job python -m nas.run evaluator.device=$DEVICE target.options.device=$DEVICE progress=false \
  output_dir="$OUT/runs" run_name=default
step differentiable python -m nas.run space=afrb searcher=differentiable evaluator.device=$DEVICE \
  searcher.steps=100 target=macs progress=false output_dir="$OUT/runs" run_name=differentiable
# a LUT folder of its own: the default job above already built this configuration's table
step lut_build python -m nas.lut build space=uib space.resolution=28 space.in_channels=1 space.num_classes=10 \
  target=cpu target.options.device=$DEVICE target.options.lut_dir="$OUT/lut_build" mode=fast progress=false
step lut_validate python -m nas.lut validate space=uib space.resolution=28 space.in_channels=1 space.num_classes=10 \
  target=cpu target.options.device=$DEVICE target.options.lut_dir="$OUT/lut_build" n=30 progress=false \
  output_dir="$OUT"
precision=float16; [ "$DEVICE" = cpu ] && precision=bfloat16
step mixed_precision python -m nas.run space=mbconv searcher=random searcher.n_evals=3 evaluator.device=$DEVICE \
  evaluator.precision=$precision target=macs progress=false output_dir="$OUT/runs" run_name=mixed
echo "logs and runs: $OUT"
exit $failed
