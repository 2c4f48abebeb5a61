#!/usr/bin/env bash
# The gpu presets of every analysis script as one prepared, resumable command.
#
#   scripts/gpu-analyses.sh OUTDIR [BUDGET_SECONDS] [PART,PART,...]     # default budget 520 s
#
# Runs the parts below in order, each `python -m analyses.<script> --preset $PRESET` (default gpu)
# with --results OUTDIR/results and --runs OUTDIR/runs, and stops starting parts once the budget is
# spent; a part still running then is stopped (SIGTERM, then SIGKILL) and resumes from its stores at
# the next call (the store commits whole epochs; finished work units are skipped). A part that
# finished leaves OUTDIR/<part>.done and is skipped next time. Rerun the same command until it prints
# "all parts complete"; then copy OUTDIR/results/*.nc and *.png into results/.
#
# The parts, in the order of the plan (python -m bench.gpu_plan prints each part's FLOPs, expected H100
# minutes and calls; bench/README.md): first the paper's Tables 1 and 3 (analyses.table1: VGG11 and ResNet18,
# three seeds, 150 epochs, fp32, a probe every epoch), then the teachers of Tables 1/3/5, then the figures:
#   table1 tables probe_spread probing_curves locality data_dependence planes lottery instability head_dim
#   transfer surface hessian
# Every part resumes at its last finished epoch (resume_every=1) or work unit, so calls of any length add up.
#
# Environment: PYTHON (default .venv/bin/python, else python3), CIFAR10 (the tarball or folder;
# default: the shared cifar10-jpg.tar.gz beside the checkout), PRESET (default gpu; smoke for a check
# of this script on a CPU).
set -uo pipefail

OUT=${1:?usage: scripts/gpu-analyses.sh OUTDIR [BUDGET_SECONDS] [PART,PART,...]}
BUDGET=${2:-520}
# paths given relative to the caller's folder stay so after the cd to the checkout
OUT=$(realpath -m "$OUT")
[ -n "${CIFAR10:-}" ] && CIFAR10=$(realpath -m "$CIFAR10")
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PRESET=${PRESET:-gpu}
CIFAR10=${CIFAR10:-../shared/data/cifar10-jpg.tar.gz}
ALL="table1 tables probe_spread probing_curves locality data_dependence planes lottery instability head_dim transfer surface hessian"
PARTS=${3:-$ALL}
PARTS=${PARTS//,/ }
for p in $PARTS; do
    case " $ALL " in *" $p "*) ;; *) echo "gpu-analyses: error: unknown part '$p': choose from ${ALL// /, }" >&2; exit 2;; esac
done
if ! [[ $BUDGET =~ ^[0-9]+$ ]]; then echo "gpu-analyses: error: BUDGET_SECONDS must be a whole number, got '$BUDGET'" >&2; exit 2; fi
mkdir -p "$OUT/results" "$OUT/runs" || { echo "gpu-analyses: error: cannot create $OUT" >&2; exit 2; }

command_of() {  # the analysis command of one part
    echo "$PYTHON -m analyses.$1 --preset $PRESET --results $OUT/results --runs $OUT/runs --root $CIFAR10"
}

start=$(date +%s)
for p in $PARTS; do
    if [ -e "$OUT/$p.done" ]; then echo "== $p: done earlier"; continue; fi
    left=$(( BUDGET - ($(date +%s) - start) ))
    if [ "$left" -le 0 ]; then echo "== budget spent; rerun the same command to go on"; break; fi
    cmd=$(command_of "$p")
    echo "== $p ($left s left): $cmd"
    # shellcheck disable=SC2086 # word splitting of the command is intended
    timeout --signal=TERM --kill-after=15 "$left" $cmd > "$OUT/$p.log" 2>&1
    rc=$?
    tail -n 3 "$OUT/$p.log"
    if [ $rc -eq 0 ]; then
        touch "$OUT/$p.done"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "== $p: stopped by the budget; it resumes at the next call"
        break
    else
        echo "== $p: failed (exit $rc); see $OUT/$p.log" >&2
    fi
done
missing=$(for p in $PARTS; do [ -e "$OUT/$p.done" ] || echo -n "$p "; done)
if [ -z "$missing" ]; then echo "all parts complete: results in $OUT/results"; exit 0; fi
echo "not complete: $missing"
exit 3
