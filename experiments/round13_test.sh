#!/usr/bin/env bash
# Issue #17, round 13: `test` and the cross-source figures, computed once, and only for a round that
# passed its pre-registered `val` rule (docs/experiments.md, round 13). A person who has read
# $R13/r13_vs_r7_val.json against the rule marks it passed (`touch $R13/passed`); without that marker
# this script refuses. Steps are idempotent (markers), so a cut run is finished by running it again:
#
#   nohup bash experiments/round13_test.sh > /tmp/runs17i/log.test 2>&1 &
#
# It adds HAM10000's `test` rows to both `train`+`val` indexes (the shipped model's and round 13's;
# `dermsearch index` skips what an index holds), then writes, nothing chosen on `test`:
#   r13_vs_r7_test.json   the paired compare, test queries vs train+val, measures chosen on val
#   r13_test.json         round 13 alone, its headline chosen on val (as the shipped model's table)
#   r13_isic.json         isic-uda1 queries vs round 13's train+val rows, headline chosen on HAM val, untuned
set -euo pipefail
cd "$(dirname "$0")/.."
R13=$(realpath "${R13:-/tmp/runs17i}")
D=../shared/data/ham10000
PY=$(realpath -s "${PY:-.venv/bin/python}")   # -s: a venv's python is a symlink; resolved, it loses the venv
DS=$(realpath "${DS:-.venv/bin/dermsearch}")
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

if [ ! -e "$R13/passed" ]; then
    echo "round 13 is not marked passed ($R13/passed): test is computed only for a round that passed on val" >&2
    exit 2
fi
[ -e "$R13/labels_test.csv" ] || "$PY" experiments/split_labels.py $D/labels.csv $D/split.csv "$R13/labels_test.csv" test

for m in r7 r13; do
    if [ ! -e "$R13/$m-test-indexed" ]; then
        say "adding the test rows to $m's index"
        "$DS" index "$R13/labels_test.csv" --index "$R13/ham-$m" --quiet   # an existing index keeps its model
        touch "$R13/$m-test-indexed"
    fi
done

run() {   # run NAME ARGS...: dermsearch evaluate ARGS --json > $R13/NAME.json, once
    local name=$1; shift
    if [ ! -e "$R13/$name.json" ]; then
        say "$name"
        "$DS" evaluate "$@" --json > "$R13/$name.json.tmp"
        mv "$R13/$name.json.tmp" "$R13/$name.json"
    fi
}
run r13_vs_r7_test "$R13/ham-r7" --compare "$R13/ham-r13" --split $D/split.csv \
    --query-split test --candidate-split train val --choose-on val
run r13_test "$R13/ham-r13" --split $D/split.csv --query-split test --candidate-split train val --choose-on val
run r13_isic "$R13/ham-r13" --queries ../shared/data/isic-uda1/labels.csv --diagnosis-map nevus=nv,melanoma=mel \
    --split $D/split.csv --candidate-split train val --choose-on val --choose-metric melanoma_auc_vote16
say "done: $R13/r13_vs_r7_test.json, r13_test.json, r13_isic.json"
