#!/usr/bin/env bash
# The GPU validation as one command, for a machine that has a GPU but not energytok: run from the repository root.
#
#   bash benchmarks/gpu_validation.sh [--quick] [--dry-run-fake] [--reference CSV]
#
# What it needs there: python3 with torch (CUDA), nvidia-ml-py, numpy, pandas, scipy, statsmodels, seaborn,
# matplotlib, tqdm, transformers and tokenizers (the lent H200 machine's image has all of these), plus the wheels
# of what that image lacks, carried in .whl/ (git-ignored): fastcore, codecarbon and rapidfuzz (the one codecarbon
# dependency its CPU estimate imports that the image does not have). energytok itself runs from this checkout.
#
# It installs the wheels into a temporary folder, puts the checkout and that folder on PYTHONPATH, gives the
# `energytok` command a shim (the same entry point as the console script), and runs benchmarks/gpu_validation.py
# into $OUT (or results/gpu_validation), teeing everything to log.txt there. It writes at most 8 files
# (results.json, windows.csv, overhead.csv, trace_matmul.csv, model.csv, llm.csv, log.txt) and never runs past
# 8 minutes: the script's own budget is what is left of them, checked inside every section, and `timeout` stops
# it 15 s later still if it does not stop itself (results.json is written either way).
#
# Refresh the wheels here, where pip reaches PyPI, for that machine's platform (Python 3.12, x86-64):
#   bash benchmarks/gpu_validation.sh --download-wheels
# With the device tool: run(command="bash benchmarks/gpu_validation.sh", carry=[".whl"], timeout_s=540).
set -uo pipefail
cd "$(dirname "$0")/.."

LIMIT_S=${GPU_VALIDATION_LIMIT_S:-480}  # 8 minutes, everything included
WHL=${GPU_VALIDATION_WHEELS:-.whl}  # the carried wheels (another folder only to rehearse with another Python)
WHEELS=(fastcore==2.2.41 codecarbon==3.3.2 rapidfuzz==3.14.6)
start_s=$(date +%s)

download_wheels() {
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
  ls -l .whl
}

main() {
  echo "gpu_validation.sh: $(date -u +%FT%TZ) on $(hostname); python3 $(python3 -c 'import sys; print(sys.version.split()[0])')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,pci.bus_id,uuid,driver_version,power.limit,temperature.gpu --format=csv
  local site bin
  site=$(mktemp -d)/site; bin=$(mktemp -d)
  if compgen -G "$WHL/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHL"/*.whl \
      || { echo "gpu_validation.sh: installing the carried wheels failed" >&2; return 3; }
  else
    echo "gpu_validation.sh: no wheels in $WHL/ (bash benchmarks/gpu_validation.sh --download-wheels, and carry .whl)"
  fi
  export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
  printf '#!/usr/bin/env bash\nexec python3 -c "import sys; from energytok.cli import main; sys.exit(main())" "$@"\n' > "$bin/energytok"
  chmod +x "$bin/energytok"; export PATH="$bin:$PATH"
  python3 -c "import energytok, energytok.meter, energytok.workload, fastcore; print('energytok', energytok.__version__, 'from', energytok.__file__)" \
    || { echo "gpu_validation.sh: energytok does not import here" >&2; return 3; }
  local ref=()
  [ -f ../shared/reference/mlenergy_llm_v3.csv ] && ref=(--reference ../shared/reference/mlenergy_llm_v3.csv)
  local left=$(( LIMIT_S - ($(date +%s) - start_s) - 20 ))  # 20 s for the stop, the file count and the shell
  timeout --signal=TERM --kill-after=10 "$(( left - 5 ))" \
    python3 benchmarks/gpu_validation.py "$OUT_DIR" --budget-s "$(( left - 20 ))" "${ref[@]}" "$@"
  local rc=$?
  [ "$rc" -eq 124 ] && echo "gpu_validation.sh: stopped by the time limit; results.json holds what was done"
  local n; n=$(find "$OUT_DIR" -type f | wc -l)
  echo "gpu_validation.sh: $n files in $OUT_DIR after $(( $(date +%s) - start_s )) s (limit $LIMIT_S s): $(ls "$OUT_DIR" | tr '\n' ' ')"
  [ "$n" -le 8 ] || echo "gpu_validation.sh: more than 8 files: the device tool returns only 8" >&2
  return "$rc"
}

if [ "${1:-}" = "--download-wheels" ]; then download_wheels; exit $?; fi
OUT_DIR=${OUT:-results/gpu_validation}
mkdir -p "$OUT_DIR"
main "$@" 2>&1 | tee -a "$OUT_DIR/log.txt"
exit "${PIPESTATUS[0]}"
