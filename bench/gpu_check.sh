#!/usr/bin/env bash
# The GPU check, as it is, on a machine with NVIDIA GPUs and a PyTorch in python3 (torchgraft is read from
# src/, nothing is installed). Under 8 minutes on one H200: bf16 + channels-last fine-tuning vs a hand-written
# loop, the frozen stage with and without the feature cache, then DDP and FSDP2 on NCCL with one process per
# GPU and each rank's placement checked. Results: $OUT (or gpu_check_out/) single.json, ddp.json, fsdp.json.
# Record the figures in docs/benchmarks.md.
#
#   bash bench/gpu_check.sh            # on the GPU machine
#   bash bench/gpu_check.sh --smoke    # the same steps, tiny, on the CPU (what the test suite runs)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu_check_out}
SMOKE=${1:-}
mkdir -p "$OUT_DIR"
if [ "$SMOKE" = "--smoke" ]; then
    PROCS=2
else
    PROCS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
    [ "$PROCS" -ge 1 ] || { echo "gpu_check: no CUDA device (run with --smoke on a CPU)" >&2; exit 1; }
    nvidia-smi -L || true
fi
"$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
timeout 300 "$PYTHON" bench/gpu_check.py single "$OUT_DIR" $SMOKE
for strategy in ddp fsdp; do
    timeout 150 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$PROCS" \
        bench/gpu_check.py "$strategy" "$OUT_DIR" $SMOKE
done
echo "gpu_check: wrote $OUT_DIR/single.json $OUT_DIR/ddp.json $OUT_DIR/fsdp.json"
