#!/usr/bin/env bash
# GPU readiness kit (issue 14, item 8): on one NVIDIA GPU, in at most 8 minutes,
#   1 env           nvidia-smi, torch + CUDA, device, pynvml, the modules the kit needs
#   2 cuda_tests    every test that is skipped without CUDA (found by benchmarks/gpu_check/cuda_select.py)
#   3 overhead      benchmarks/overhead.py --device cuda --config small: default probes <= 1.02x, syncs added = 0
#   4 nvml          the NVML sampler at 2 Hz under a matmul load: util/mem/power/temp/clock, throttle reasons
#   5 fsdp_compile  FSDP2 (one rank, NCCL) + torch.compile, default probes: breaks added, grad norms equal
#   6 sample_run    a small GPU sample run (engine `tiny`, 40 steps, default probes) for sample_runs/
#   7 determinism   default probes under torch.use_deterministic_algorithms(True): none switched off,
#                   losses bitwise equal watched vs unwatched
# then one table: stage, status, figures, budget, verdict. Each stage runs in its own process under
# its own timeout; a failing or hung stage is reported and the next one runs.
#
# Usage (from anywhere; it works in the repo root):
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run   # here: every stage on CPU, GPU parts N/A (plumbing check)
# Options: --quick (smallest sizes), --stages env,nvml (a subset), --pack (leave only summary.txt,
# summary.json and gpu_check.tar.gz in $OUT: for machines that return few files).
# Environment: OUT (default benchmarks/gpu_out), PYTHON (interpreter; default: the first of .venv/bin/python,
# python3, python whose torch sees CUDA, or in a dry run imports torch), GPU_CHECK_TIMEOUT_<STAGE> (seconds),
# GPU_CHECK_FAIL / GPU_CHECK_HANG=stage,... (force a failure / a hang, to test the plumbing).
# Outputs under $OUT: summary.txt (table + every figure), summary.json, logs/<stage>.log,
# results/<stage>.json, work/ (runs, JSON), sample_runs/gpu-tiny (copy into sample_runs/), gpu_check.tar.gz.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
DRY=${GPU_CHECK_DRY_RUN:-0}
QUICK=${GPU_CHECK_QUICK:-0}
PACK=0
ALL_STAGES="env cuda_tests overhead nvml fsdp_compile sample_run determinism"
STAGES=$ALL_STAGES
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --quick) QUICK=1 ;;
    --pack) PACK=1 ;;
    --stages) shift; STAGES=$(echo "${1:-}" | tr ',' ' ') ;;
    --stages=*) STAGES=$(echo "${1#--stages=}" | tr ',' ' ') ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for s in $STAGES; do
  case " $ALL_STAGES " in *" $s "*) ;; *) echo "gpu_check.sh: unknown stage $s (known: $ALL_STAGES)" >&2; exit 2 ;; esac
done

OUT=${OUT:-benchmarks/gpu_out}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/results" "$OUT/logs" "$OUT/work" "$OUT/sample_runs" "$OUT/summary.txt" "$OUT/summary.json" "$OUT/gpu_check.tar.gz"
mkdir -p "$OUT/results" "$OUT/logs" "$OUT/work"

export GPU_CHECK_DRY_RUN=$DRY GPU_CHECK_QUICK=$QUICK PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# Per-stage timeouts (s). GPU: 30+50+175+35+85+55+30 = 460 s at most, under the 8-minute budget with
# the interpreter pick. The dry run is slower per step (CPU, maybe a busy machine) and has no budget.
if [ "$DRY" = 1 ]; then
  declare -A LIMIT=([env]=90 [cuda_tests]=240 [overhead]=300 [nvml]=90 [fsdp_compile]=300 [sample_run]=240
                    [determinism]=180)
else
  declare -A LIMIT=([env]=30 [cuda_tests]=50 [overhead]=175 [nvml]=35 [fsdp_compile]=85 [sample_run]=55
                    [determinism]=30)
fi

# coreutils' timeout signals the stage's whole process group (pytest, overhead.py go with it).
if command -v timeout >/dev/null 2>&1; then
  TIMEOUT="timeout --kill-after=10"
else
  echo "gpu_check.sh: no 'timeout' command: stages run without their time limits" >&2
  no_timeout() { shift; "$@"; }
  TIMEOUT=no_timeout
fi

# The interpreter: PYTHON if set, else the first candidate whose torch sees CUDA (dry run: imports
# torch). A carried .venv with a CPU-only torch, or one whose base interpreter is missing, is passed over.
pick_python() {
  local want cands=() py
  if [ "$DRY" = 1 ]; then want="import torch"; else want="import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; fi
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  [ -x .venv/bin/python ] && cands+=(.venv/bin/python)
  cands+=(python3 python)
  for py in "${cands[@]}"; do
    command -v "$py" >/dev/null 2>&1 || continue
    if $TIMEOUT 90 "$py" -c "$want" >/dev/null 2>&1; then echo "$py"; return; fi
  done
  for py in "${cands[@]}"; do  # none sees CUDA: the first with torch, so the stages can say why
    command -v "$py" >/dev/null 2>&1 || continue
    if $TIMEOUT 90 "$py" -c "import torch" >/dev/null 2>&1; then echo "$py"; return; fi
  done
  echo python3
}

T_START=$(date +%s)
PY=$(pick_python)
{
  echo "GPU readiness kit — $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -n 2>/dev/null)"
  echo "mode: $([ "$DRY" = 1 ] && echo 'CPU dry run (GPU parts N/A)' || echo GPU)$([ "$QUICK" = 1 ] && echo ', quick')"
  echo "python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1))"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' + local changes')"
  command -v nvidia-smi >/dev/null 2>&1 && echo "gpus: $(nvidia-smi -L 2>&1 | head -4 | tr '\n' ' ')"
  echo "out: $OUT"
  echo
} >"$OUT/results/header.txt"
cat "$OUT/results/header.txt"

for stage in $STAGES; do
  limit=${LIMIT[$stage]}
  var="GPU_CHECK_TIMEOUT_$(echo "$stage" | tr '[:lower:]' '[:upper:]')"
  limit=${!var:-$limit}
  t0=$(date +%s)
  printf '%-13s running (timeout %ss) ...' "$stage" "$limit"
  GPU_CHECK_TIMEOUT=$limit $TIMEOUT "$limit" "$PY" -m "benchmarks.gpu_check.$stage" "$OUT" \
    >"$OUT/logs/$stage.log" 2>&1 </dev/null
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  echo "$rc $secs $limit" >"$OUT/results/$stage.rc"
  case $rc in
    0) note="ok" ;; 1) note="verdict FAIL" ;; 124|137) note="TIMEOUT" ;; *) note="exit $rc" ;;
  esac
  printf ' %s in %ss (logs/%s.log)\n' "$note" "$secs" "$stage"
done

echo
# shellcheck disable=SC2086
"$PY" -m benchmarks.gpu_check.summary "$OUT" $STAGES
status=$?
if [ $status -gt 1 ]; then  # the summary itself failed: show the raw exit codes
  echo "summary failed (exit $status); stage exit codes (rc seconds timeout):"
  for stage in $STAGES; do echo "  $stage: $(cat "$OUT/results/$stage.rc" 2>/dev/null || echo 'not run')"; done
fi
echo "total: $(( $(date +%s) - T_START )) s; summary: $OUT/summary.txt"

tar -czf "/tmp/gpu_check.$$.tar.gz" -C "$OUT" --exclude=./gpu_check.tar.gz . 2>/dev/null \
  && mv "/tmp/gpu_check.$$.tar.gz" "$OUT/gpu_check.tar.gz"
if [ "$PACK" = 1 ] && [ -f "$OUT/gpu_check.tar.gz" ]; then
  rm -rf "$OUT/results" "$OUT/logs" "$OUT/work" "$OUT/sample_runs"
  echo "packed: $OUT/gpu_check.tar.gz (tar -xzf it for logs/, results/, work/, sample_runs/)"
fi
exit $status
