#!/usr/bin/env bash
# One-shot check of tood-ext on a fresh GPU machine (torch preinstalled, system python3, offline):
# build the CUDA kernels for the local GPU, run the test suite, run the benchmarks, and (when
# $OUT is set) copy the logs and the benchmark results there.
#
#   bash benchmarks/gpu_check.sh          # from the repository root
#
# Environment knobs (all optional):
#   CUDA_HOME              CUDA toolkit (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST   archs to compile for (default: setup.py targets the visible GPU)
#   FORCE_CUDA             default 1: the build fails unless the CUDA kernels are built
#   PYTEST_ARGS            default "-q -ra tests", plus "-n 8 --dist loadfile" where
#                          pytest-xdist is importable (2 torch threads per worker)
#   BENCH_ARGS             default "--device cuda" (the CPU results come from CI-sized
#                          machines; "--device all" adds this host's CPU)
#   BUDGET_S               default 540: wall-clock budget of the whole script; the tests get at
#                          most TEST_BUDGET_S (default 240) of it, the benchmarks the rest, each
#                          stage is stopped (timeout) at its share so that the summary and $OUT
#                          are always written within the budget (a device lease is short)
#   WHEELS_DIR             default .device-wheels: *.whl there are pip-installed first (no
#                          deps, no index; failures tolerated), e.g. the ultralytics wheel
#                          for the peer columns (`pip download --no-deps -d .device-wheels
#                          ultralytics==8.4.190` on a machine with an index, then carry it)
#   OUT                    directory that receives the logs and results (flat, <= 8 files)
# Exit status: 0 when build, tests and benchmarks all passed; the build aborts the script, a
# test or benchmark failure (or timeout) is recorded and the script goes on, then exits non-zero.
set -euo pipefail

export PYTHONUNBUFFERED=1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
export PIP_BREAK_SYSTEM_PACKAGES=1  # system python3 may be marked externally managed
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export PATH="$CUDA_HOME/bin:$PATH"
export FORCE_CUDA="${FORCE_CUDA:-1}"
PY=python3
BUDGET_S="${BUDGET_S:-540}"
TEST_BUDGET_S="${TEST_BUDGET_S:-240}"
if [ -z "${PYTEST_ARGS:-}" ]; then
    PYTEST_ARGS="-q -ra tests"
    if $PY -c "import xdist" 2>/dev/null; then
        PYTEST_ARGS="$PYTEST_ARGS -n 8 --dist loadfile"
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
    fi
fi
BENCH_ARGS="${BENCH_ARGS:---device cuda}"

cd "$(dirname "${BASH_SOURCE[0]}")/.."  # repository root, wherever we were called from
ROOT="$(pwd)"
LOGDIR="$(mktemp -d /tmp/tood-gpu-check.XXXXXX)"
BUILD_LOG="$LOGDIR/build.log"
PYTEST_LOG="$LOGDIR/pytest.log"
BENCH_LOG="$LOGDIR/bench.log"
SUMMARY="$LOGDIR/summary.txt"
STAMP="$LOGDIR/.start-stamp"
touch "$STAMP"
sleep 1  # results written from now on are strictly newer than the stamp

BUILD_RC="not run"
TEST_RC="not run"
BENCH_RC="not run"
T0=$(date +%s)
# seconds left of the budget, minus a margin (timeout -k, summary, copy to $OUT); at least 10
left() { local l=$(( BUDGET_S - ($(date +%s) - T0) - 30 )); [ "$l" -lt 10 ] && l=10; echo "$l"; }

section() { printf '\n========== %s ==========\n' "$*"; }

summary() {
    {
        echo "tood-ext gpu_check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(( $(date +%s) - T0 )) s)"
        echo "repo: $ROOT  commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo unknown)"
        echo "build (pip install -e . FORCE_CUDA=$FORCE_CUDA): rc=$BUILD_RC"
        echo "pytest ($PYTEST_ARGS): rc=$TEST_RC"
        if [ -f "$PYTEST_LOG" ]; then
            echo "  $(grep -E '(passed|failed|error|skipped)' "$PYTEST_LOG" | tail -1)"
        fi
        echo "benchmarks ($BENCH_ARGS): rc=$BENCH_RC"
        if [ -f "$BENCH_LOG" ]; then
            grep -E '^(wrote |total |WARNING)' "$BENCH_LOG" | sed 's/^/  /' || true
        fi
    } > "$SUMMARY"
}

collect() {
    # runs on every exit (also when the build aborts the script): summary, then copy to $OUT
    local rc=$?
    set +e
    [ "$BUILD_RC" = running ] && BUILD_RC="FAILED (script aborted, rc=$rc)"
    summary
    section "summary"
    cat "$SUMMARY"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        local n=0 f base
        for f in "$SUMMARY" "$BUILD_LOG" "$PYTEST_LOG" "$BENCH_LOG" \
                 $(find "$ROOT/benchmarks/results" -maxdepth 1 -type f -newer "$STAMP" \
                       \( -name '*.json' -o -name '*.md' \) 2>/dev/null | sort); do
            [ -f "$f" ] || continue
            if [ "$n" -ge 8 ]; then echo "OUT: file limit (8) reached, not copied: $f"; continue; fi
            base="$(basename "$f" | tr -c 'A-Za-z0-9._\n-' '_')"
            cp "$f" "$OUT/$base" && n=$((n + 1))
        done
        echo "copied $n files to $OUT"
    fi
    exit "$rc"
}
trap collect EXIT

section "machine"
nvidia-smi || echo "nvidia-smi failed"
echo "CUDA_HOME=$CUDA_HOME"; ls "$CUDA_HOME/bin/nvcc" && "$CUDA_HOME/bin/nvcc" --version | tail -2 \
    || echo "no nvcc under $CUDA_HOME"
echo "nproc: $(nproc)"
$PY - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name} sm_{p.major}{p.minor} {p.total_memory / 2**30:.1f} GiB")
for mod in ("torchvision", "pytest", "numpy", "setuptools", "ninja", "pip"):
    try:
        m = __import__(mod)
        print(f"{mod} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"{mod}: NOT AVAILABLE ({exc})")
EOF

WHEELS_DIR="${WHEELS_DIR:-.device-wheels}"
if compgen -G "$WHEELS_DIR/*.whl" > /dev/null; then
    section "optional wheels from $WHEELS_DIR"
    $PY -m pip install --no-deps --no-index "$WHEELS_DIR"/*.whl \
        || echo "NOTE: wheels from $WHEELS_DIR not installed; the tests/columns needing them skip"
fi

section "build (FORCE_CUDA=$FORCE_CUDA TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-<visible GPU>})"
BUILD_RC=running
if $PY -m pip install --no-build-isolation --no-deps -v -e . 2>&1 | tee "$BUILD_LOG"; then
    BUILD_HOW="pip install -e ."
else
    # e.g. a setuptools too old for PEP 660 editables: build in place instead (importable from
    # the repo root, where pytest and the benchmarks run)
    echo "pip install -e . failed; falling back to setup.py build_ext --inplace" | tee -a "$BUILD_LOG"
    $PY setup.py build_ext --inplace 2>&1 | tee -a "$BUILD_LOG"
    BUILD_HOW="setup.py build_ext --inplace (pip install -e . failed)"
fi
$PY -c "import tood_ext, json; print('tood_ext.build_info():', json.dumps(tood_ext.build_info()))"
if [ "$FORCE_CUDA" = 1 ]; then
    $PY -c "import tood_ext, sys; sys.exit(0 if tood_ext.build_info()['cuda'] else 'built without CUDA kernels')"
fi
BUILD_RC="0, $BUILD_HOW"

T_TEST=$(left); [ "$T_TEST" -gt "$TEST_BUDGET_S" ] && T_TEST=$TEST_BUDGET_S
section "pytest $PYTEST_ARGS (timeout ${T_TEST} s)"
TEST_RC=0
# shellcheck disable=SC2086
timeout -k 20 "$T_TEST" $PY -m pytest $PYTEST_ARGS 2>&1 | tee "$PYTEST_LOG" || TEST_RC=$?
[ "$TEST_RC" = 124 ] && TEST_RC="124 (timed out after ${T_TEST} s)"

T_BENCH=$(left)
section "benchmarks $BENCH_ARGS (timeout ${T_BENCH} s)"
BENCH_RC=0
# shellcheck disable=SC2086
timeout -k 20 "$T_BENCH" $PY -m benchmarks $BENCH_ARGS 2>&1 | tee "$BENCH_LOG" || BENCH_RC=$?
[ "$BENCH_RC" = 124 ] && BENCH_RC="124 (timed out after ${T_BENCH} s)"

if [ "$TEST_RC" != 0 ] || [ "$BENCH_RC" != 0 ]; then
    echo "FAILED: pytest rc=$TEST_RC, benchmarks rc=$BENCH_RC"
    exit 1
fi
echo "OK: build, tests and benchmarks passed"
