#!/usr/bin/env bash
# Issue #17: `test` and the cross-source figures of a variant, computed once, and only for a round that
# passed its pre-registered `val` rule (experiments/val_round.sh ran first, with the same RUN and NAME).
# A person who has read $RUN/${NAME}_vs_r7_val.json against the rule marks it passed (`touch $RUN/passed`);
# without that marker this script refuses (exit 2). Steps are idempotent, so a cut run is finished by
# running it again:
#
#   RUN=/tmp/runs17j NAME=r14 nohup bash experiments/val_round_test.sh > /tmp/runs17j/log.test 2>&1 &
#
# It adds HAM10000's `test` rows to both `train`+`val` indexes (the shipped model's and the variant's;
# `dermsearch index` skips what an index holds), then writes, nothing chosen on `test`:
#   ${NAME}_vs_r7_test.json   the paired compare, test queries vs train+val, measures chosen on val
#   ${NAME}_test.json         the variant alone, its headline chosen on val (as the shipped model's table)
#   ${NAME}_isic.json         isic-uda1 queries vs the variant's train+val rows, headline chosen on HAM val
source "$(dirname "$0")/round_lib.sh"

if [ ! -e "$RUN/passed" ]; then
    echo "$NAME is not marked passed ($RUN/passed): test is computed only for a round that passed on val" >&2
    exit 2
fi
[ -e "$RUN/labels_test.csv" ] || "$PY" experiments/split_labels.py $D/labels.csv $D/split.csv "$RUN/labels_test.csv" test

for m in r7 "$NAME"; do
    if [ ! -e "$RUN/$m-test-indexed" ]; then
        say "adding the test rows to $m's index"
        "$DS" index "$RUN/labels_test.csv" --index "$RUN/ham-$m" --quiet   # an existing index keeps its model
        touch "$RUN/$m-test-indexed"
    fi
done

evaluate_once "${NAME}_vs_r7_test" "$RUN/ham-r7" --compare "$RUN/ham-$NAME" --split $D/split.csv \
    --query-split test --candidate-split train val --choose-on val
evaluate_once "${NAME}_test" "$RUN/ham-$NAME" --split $D/split.csv --query-split test \
    --candidate-split train val --choose-on val
evaluate_once "${NAME}_isic" "$RUN/ham-$NAME" --queries ../shared/data/isic-uda1/labels.csv \
    --diagnosis-map nevus=nv,melanoma=mel --split $D/split.csv --candidate-split train val --choose-on val \
    --choose-metric melanoma_auc_vote16
say "done: $RUN/${NAME}_vs_r7_test.json, ${NAME}_test.json, ${NAME}_isic.json"
