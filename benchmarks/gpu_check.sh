#!/usr/bin/env bash
# The speed benchmark on CUDA with mixed precision: one command, a few minutes.
#
#   bash benchmarks/gpu_check.sh                 # bf16 (fp16 on GPUs without bf16), writes benchmarks/results/speed-cuda-*.{json,md}
#   bash benchmarks/gpu_check.sh --quick         # extra arguments go to benchmarks/speed.py
#
# Teachers run under torch.autocast(cuda, bf16|fp16); the student trains with Accelerate's mixed precision.
# Then benchmarks/data_scale.py: the 224 px data path (teacher images/s, student step time, memory vs data size).
# Without a CUDA device it says so, runs the CPU smoke test instead (speed.py --quick) and exits 3, so a CI
# job or a person never mistakes the fallback for a GPU result.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: NO GPU CHECK RAN: torch sees no CUDA device (torch.cuda.is_available() is False;" \
         "torch $("$PY" -c 'import torch; print(torch.__version__)'))." >&2
    echo "gpu_check: running the CPU smoke test instead (benchmarks/speed.py --quick)." >&2
    "$PY" benchmarks/speed.py --quick --out benchmarks/results/speed-cpu-quick.json
    exit 3
fi

PRECISION=${PRECISION:-$("$PY" -c "import torch; print('bf16' if torch.cuda.is_bf16_supported() else 'fp16')")}
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, precision $PRECISION')"
"$PY" benchmarks/speed.py --device cuda --precision "$PRECISION" --threads "${THREADS:-4}" \
    --max_unlabeled 1000000 --out "benchmarks/results/speed-cuda-$PRECISION.json" "$@"
# The 224 px path: lazy decoding in DataLoader workers, each teacher through its own processor in $PRECISION
# (teacher images/s against a plain loop), a 224 px student (seconds per step), memory at 10,000 vs 100,000 images.
"$PY" benchmarks/data_scale.py --device cuda --precision "$PRECISION" --student_size 224 \
    --workers "${WORKERS:-8}" --threads "${THREADS:-4}" --out "benchmarks/results/data_scale-cuda-$PRECISION.json"
