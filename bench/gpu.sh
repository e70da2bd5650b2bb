#!/usr/bin/env bash
# The GPU run of issue 21 (item 3), for a lent device: from the repository root,
#     bash bench/gpu.sh [more bench_gpu flags]
# ViT-B-16 with random weights (no weights to fetch), fp32 and bf16, batch sizes 128/256/512,
# 4/8/16 decode workers, 4,096 JPEGs; then the refit on the device against the CPU path.
# Installs nothing: it needs this checkout's requirements (torch with CUDA, open_clip_torch) already
# installed. Ends within 5 minutes: bench_gpu starts no step after 240 s, and timeout stops it at 290 s.
# Record what it prints in bench/RESULTS.md ("The GPU run"), with the device's name.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available:', torch.cuda.is_available())"
CLIP_ICM_CACHE="$(mktemp -d)" exec timeout 290 python -m bench.bench_gpu --device cuda --model ViT-B-16 \
    --images 4096 --batch-sizes 128,256,512 --workers 4,8,16 --precisions fp32,bf16 \
    --refit-dims 512,768 --refit-rows 200000 --budget 240 "$@"
