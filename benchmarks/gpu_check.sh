#!/usr/bin/env bash
# One-shot GPU check of this checkout (see the docstring of benchmarks/gpu_check.py): under five minutes,
# nothing downloaded or installed, the JSON rewritten after every section and printed at the end.
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine, from anywhere
#   bash benchmarks/gpu_check.sh --device cpu --quick  # the dry run (under a minute on 2 cores)
#
# The JSON goes to $OUT/gpu_check.json when $OUT is set, else gpu_check.json in the repository root
# (--out FILE overrides). PYTHON picks the interpreter (default: python, else python3).
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
PY="${PYTHON:-$(command -v python || command -v python3)}"
if [ -n "${OUT:-}" ]; then json="$OUT/gpu_check.json"; else json="gpu_check.json"; fi
prev=""
for arg in "$@"; do  # the file gpu_check.py will write, when --out names another
  [ "$prev" = "--out" ] && json="$arg"
  case "$arg" in --out=*) json="${arg#--out=}" ;; esac
  prev="$arg"
done
# SIGTERM at 290 s (gpu_check.py then stops its running section and saves the JSON), SIGKILL 5 s later.
timeout -k 5 290 "$PY" benchmarks/gpu_check.py "$@"
rc=$?
echo "=== $json (exit status $rc) ==="
cat "$json" 2>/dev/null || echo "(no JSON at $json)"
exit $rc
