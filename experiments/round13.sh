#!/usr/bin/env bash
# Issue #17, round 13 (docs/experiments.md): round 7's recipe with whole members in bfloat16 on the CPU,
# judged on `val` by the rule fixed before the run. Every step is idempotent and the training resumes per
# member-epoch, so the same command finishes the round across sittings:
#
#   mkdir -p /tmp/runs17i && nohup bash experiments/round13.sh > /tmp/runs17i/log 2>&1 &
#
# R13 (default /tmp/runs17i) holds the run's state; it must outlive the machine for the round to span
# sittings. /tmp was the only place here (it survived nine changes of sitting, not the tenth); elsewhere
# set R13 to storage that persists. It needs ../shared (HAM10000) and the venv's dermsearch (PY and DS
# may name others). Markers in $R13 say which steps are done:
# trained, r13-indexed, r7-indexed, compared, cost, done. The decision itself is made by a person
# reading $R13/r13_vs_r7_val.json against the rule; nothing here computes `test` (experiments/round13_test.sh
# does, once, and only after that person has marked the round passed).
set -euo pipefail
cd "$(dirname "$0")/.."
R13=${R13:-/tmp/runs17i}
D=../shared/data/ham10000
PY=$(realpath -s "${PY:-.venv/bin/python}")   # -s: a venv's python is a symlink; resolved, it loses the venv
DS=$(realpath "${DS:-.venv/bin/dermsearch}")
mkdir -p "$R13"
R13=$(realpath "$R13")
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

if [ ! -e "$R13/trained" ]; then
    say "training (resumes from the last saved member-epoch)"
    "$DS" train classifier --labels $D/labels.csv --split $D/split.csv \
        --trainable-stages 7 --stage-lr-decay 0.5 --batch-size 32 --precision bf16 --out "$R13/whole" --quiet
    touch "$R13/trained"
fi

if [ ! -e "$R13/labels_trval.csv" ]; then   # the train + val rows: what both indexes hold
    "$PY" experiments/split_labels.py $D/labels.csv $D/split.csv "$R13/labels_trval.csv" train val
fi

if [ ! -e "$R13/r13-indexed" ]; then
    say "indexing train + val with round 13's ensemble"
    "$DS" index "$R13/labels_trval.csv" --index "$R13/ham-r13" --weights "$R13/whole/ensemble.safetensors" \
        --gram-pool lesion --gram-margin 0.05 --gram-norm l2 --gram-weights inverse-channels --quiet
    touch "$R13/r13-indexed"
fi

if [ ! -e "$R13/r7-indexed" ]; then
    say "indexing train + val with the shipped model (round 7), every default"
    "$DS" index "$R13/labels_trval.csv" --index "$R13/ham-r7" --quiet
    touch "$R13/r7-indexed"
fi

if [ ! -e "$R13/compared" ]; then
    say "paired compare on val (982 queries vs train)"
    "$DS" evaluate "$R13/ham-r7" --compare "$R13/ham-r13" --split $D/split.csv \
        --query-split val --candidate-split train --json > "$R13/r13_vs_r7_val.json.tmp"
    mv "$R13/r13_vs_r7_val.json.tmp" "$R13/r13_vs_r7_val.json"
    touch "$R13/compared"
fi

if [ ! -e "$R13/cost" ]; then
    say "extraction cost against the packaged model"
    (cd benchmarks && "$PY" bench_ensemble_cost.py --candidate "$R13/whole/ensemble.safetensors" \
        --images 32 --rounds 2 > "$R13/cost.json.tmp") || exit 1
    mv "$R13/cost.json.tmp" "$R13/cost.json"
    touch "$R13/cost"
fi
touch "$R13/done"
say "done: read $R13/r13_vs_r7_val.json against the rule in docs/experiments.md (round 13)"
