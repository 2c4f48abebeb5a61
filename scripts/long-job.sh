#!/usr/bin/env bash
# A long analysis preset as a background job: from a git worktree pinned at one commit (later commits
# to the checkout do not change the code under the running job), niced, its stores and results outside
# the checkout, the machine's load logged beside it. Start it again after a reboot or a kill: it resumes
# from its stores (docs/workflows/long-runs.md).
#
#   scripts/long-job.sh start DIR COMMIT -- ARGS...   e.g. ... -- -m analyses.table1 --preset cpu-long
#   scripts/long-job.sh status DIR
#   scripts/long-job.sh stop DIR
#
# DIR holds code/ (the worktree), runs/, results/, job.log, load.log, pid, commit and args. ARGS go to this
# checkout's .venv python (or $PYTHON) with the worktree first on PYTHONPATH; --runs and --results are added.
# NICE (default 19) sets its niceness: a lower value gives it the CPU before a niced job beside it.
set -euo pipefail
die() { echo "long-job.sh: error: $*" >&2; exit 2; }
alive() { [ -f "$1/pid" ] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: scripts/long-job.sh start DIR COMMIT -- ARGS... | status DIR | stop DIR"
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)

case "$cmd" in
start)
    commit=${3:-}; [ -n "$commit" ] || die "start needs a COMMIT (e.g. HEAD or a hash)"
    shift 3; [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "start needs the python arguments after --, e.g. -m analyses.table1 --preset cpu-long"
    alive "$dir" && die "a job is already running in $dir (pid $(cat "$dir/pid")): 'stop' it first"
    sha=$(git -C "$here" rev-parse --verify "$commit^{commit}" 2>/dev/null) || die "$commit is not a commit of $here"
    if [ -f "$dir/commit" ] && [ "$(cat "$dir/commit")" != "$sha" ]; then
        die "$dir ran commit $(cat "$dir/commit"); resume it with that commit or choose another DIR"
    fi
    if [ ! -d "$dir/code" ]; then
        git -C "$here" worktree add --detach "$dir/code" "$sha" >/dev/null 2>&1 \
            || die "could not add a worktree at $dir/code for $sha"
    fi
    [ "$(git -C "$dir/code" rev-parse HEAD)" = "$sha" ] || die "$dir/code is not at $sha"
    echo "$sha" > "$dir/commit"
    printf '%q ' "$@" > "$dir/args"
    python=${PYTHON:-$here/.venv/bin/python}
    [ -x "$python" ] || die "$python not found: run 'make venv' first or set PYTHON"
    (
        cd "$dir/code"
        echo "=== $(date -u +%FT%TZ) start at $sha: $*" >> "$dir/job.log"
        PYTHONPATH="$dir/code" nohup nice -n "${NICE:-19}" "$python" "$@" --runs "$dir/runs" --results "$dir/results" \
            >> "$dir/job.log" 2>&1 &
        echo $! > "$dir/pid"
        job=$!
        # the machine's load beside the job, once a minute while it runs
        nohup bash -c "while kill -0 $job 2>/dev/null; do echo \"\$(date -u +%FT%TZ) \$(cut -d' ' -f1-3 /proc/loadavg)\"; sleep 60; done" \
            >> "$dir/load.log" 2>/dev/null &
    )
    echo "started pid $(cat "$dir/pid") at $sha; log: $dir/job.log"
    ;;
status)
    if alive "$dir"; then echo "running: pid $(cat "$dir/pid"), commit $(cat "$dir/commit")"; else echo "not running"; fi
    [ -f "$dir/job.log" ] && tail -n 5 "$dir/job.log"
    ;;
stop)
    alive "$dir" || { echo "not running"; exit 0; }
    kill "$(cat "$dir/pid")"; echo "stopped pid $(cat "$dir/pid") (it resumes from its stores at the next start)"
    ;;
*) die "unknown command $cmd: use start, status or stop" ;;
esac
