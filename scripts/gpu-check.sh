#!/usr/bin/env bash
# The one prepared GPU check: the gpu-marked tests, the GPU benchmarks at the paper's shapes, and as
# much of the CIFAR-10 Table 1/3 distillations (ResNet18 and VGG11, paper and reference recipes,
# 150 epochs) as fits, then every figure bench/README.md needs.
#
#   scripts/gpu-check.sh OUTDIR [BUDGET_SECONDS]      # default budget 520 s (under 9 minutes)
#
# Results go to OUTDIR (one JSON per part, logs, runs/*.rts stores). Resumable: a part that finished
# leaves OUTDIR/<part>.done and is skipped by the next call; the table runs resume from their last
# saved epoch; the figures are printed again from everything in OUTDIR. Rerun the same command
# until it prints "all parts complete".
#
# Expected time per part on one H100/H200 (estimates: nothing has been timed on a GPU yet):
#   env       5 s    card, driver, torch
#   tests    90 s    pytest -m gpu (bf16 and compiled distillation steps, vmap vs loop, device probes)
#   distill 100 s    one epoch of 50,000 images, ours vs plain, ResNet18 and VGG11, bf16 and fp32
#   paths    40 s    21-point ResNet18 BN-reset path on 10,000 test images, ours vs naive
#   probes   40 s    k-NN at 10k/50k training points and the linear probe, on the device
#   table   rest     the four 150-epoch runs in order, each as far as the budget allows
#                    (about 5-8 minutes per run at 1.5-2.5 s/epoch plus probes: about one run per call)
#   figures  10 s    prints the numbers for bench/README.md
#
# Environment: PYTHON (default .venv/bin/python, else python3) with torch+CUDA and the project
# installed (pip install -e '.[dev,bench]'); CIFAR10 = the CIFAR-10 tarball or folder (default: the
# shared cifar10-jpg.tar.gz beside or inside the checkout; its decoded .npz cache beside it is used
# when present, otherwise the first load decodes for about a minute).
set -uo pipefail

OUT=${1:?usage: scripts/gpu-check.sh OUTDIR [BUDGET_SECONDS]}
BUDGET=${2:-520}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if [ -z "${CIFAR10:-}" ]; then
  for c in ../shared/data/cifar10-jpg.tar.gz shared/data/cifar10-jpg.tar.gz; do
    [ -e "$c" ] && CIFAR10=$c && break
  done
fi
mkdir -p "$OUT/runs"
export TQDM_DISABLE=1
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
incomplete=0

part() {  # part NAME EXPECTED_S COMMAND...
  local name=$1 expected=$2; shift 2
  if [ -f "$OUT/$name.done" ]; then echo "== $name: done in an earlier call"; return 0; fi
  local rem; rem=$(left)
  if [ "$rem" -lt 20 ]; then echo "== $name: skipped, ${rem} s of the budget left: rerun to continue"; incomplete=1; return 0; fi
  echo "== $name (expected ~${expected} s, ${rem} s of the budget left) =="
  local t0; t0=$(date +%s)
  timeout --signal=INT "$rem" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s"
  if [ "$rc" -eq 0 ]; then touch "$OUT/$name.done"; else incomplete=1; fi
}

part env 5 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
  $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))'"
part tests 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests
part distill 100 "$PY" -m bench.gpu_check --out "$OUT" --part distill
part paths 40 "$PY" -m bench.gpu_check --out "$OUT" --part paths
part probes 40 "$PY" -m bench.gpu_check --out "$OUT" --part probes
if [ -n "${CIFAR10:-}" ]; then
  # the table part decides itself how many epochs fit; it is done only when all four runs reach 150
  rem=$(( $(left) - 25 ))
  if [ ! -f "$OUT/table.done" ] && [ "$rem" -gt 60 ]; then
    echo "== table (${rem} s for training) =="
    timeout --signal=INT "$(( rem + 15 ))" "$PY" -m bench.gpu_check --out "$OUT" --part table --data "$CIFAR10" \
      --seconds "$rem" 2>&1 | tee -a "$OUT/table.log"
    "$PY" - "$OUT" <<'EOF' && touch "$OUT/table.done"
import json, sys
runs = json.load(open(f"{sys.argv[1]}/table.json"))
sys.exit(0 if len(runs) == 4 and all(r["complete"] for r in runs) else 1)
EOF
  fi
  [ -f "$OUT/table.done" ] || incomplete=1
else
  echo "== table: skipped, no CIFAR-10 found (set CIFAR10=PATH)"; incomplete=1
fi
echo "== figures =="
"$PY" -m bench.gpu_check --out "$OUT" --part figures 2>&1 | tee "$OUT/figures.log"
if [ "$incomplete" -eq 0 ]; then echo "all parts complete"; else echo "incomplete: rerun scripts/gpu-check.sh $OUT"; fi
echo "total $(( $(date +%s) - START )) s"
