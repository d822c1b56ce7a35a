#!/usr/bin/env bash
# Every check energytok has: notebooks and package in sync, notebooks clean, notebook tests,
# docs processing, then pytest (whose closing line reports the count).
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg

in_git() { git rev-parse --is-inside-work-tree >/dev/null 2>&1; }
changed() { git status --porcelain -- "$@"; }

echo "== nbdev-export: the committed package must match the notebooks"
nbdev-export
if in_git && [ -n "$(changed energytok pyproject.toml)" ]; then
  echo "energytok/ differs from what nbs/ exports; run nbdev-export and commit both:" >&2
  git status --short -- energytok pyproject.toml >&2; git --no-pager diff --stat -- energytok >&2
  exit 1
fi

echo "== nbdev-clean: notebooks must be committed clean"
nbdev-clean
if in_git && [ -n "$(changed nbs)" ]; then
  echo "notebooks were not clean; run nbdev-clean and commit:" >&2
  git status --short -- nbs >&2
  exit 1
fi

echo "== nbdev-test"
nbdev-test --n-workers 2 --timing

echo "== docs"
if command -v quarto >/dev/null 2>&1; then
  nbdev-docs
else
  echo "quarto is not on PATH: running nbdev's notebook processing only"
  python tests/proc_docs.py
  python tests/readme.py --check
fi

echo "== pytest"
python -m pytest -q tests
