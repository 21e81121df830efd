#!/usr/bin/env bash
# Issue #17: train one pre-registered variant and judge it on `val` against the shipped model (round 7).
# The variant's training flags are the arguments. Every step is idempotent and the training resumes per
# member-epoch, so the same command finishes a round across sittings. Round 14 (docs/experiments.md):
#
#   mkdir -p /tmp/runs17j && RUN=/tmp/runs17j NAME=r14 nohup bash experiments/val_round.sh \
#       --scale-jitter 0.25 > /tmp/runs17j/log 2>&1 &
#
# Round 13 ran the same steps (as experiments/round13.sh, folded into this file afterwards):
#   RUN=/tmp/runs17i NAME=r13 TRAIN_DIR=whole COST=1 bash experiments/val_round.sh \
#       --trainable-stages 7 --stage-lr-decay 0.5 --batch-size 32 --precision bf16
#
# RUN holds the run's state (it must outlive the machine for a round to span sittings); NAME names the
# variant's index and compare; TRAIN_DIR (default train) is the training's folder under RUN; COST=1 adds
# the extraction-cost benchmark against the packaged model. Markers in $RUN say which steps are done:
# trained, $NAME-indexed, r7-indexed, ${NAME}_vs_r7_val.json, cost, done. The decision is made by a person reading
# $RUN/${NAME}_vs_r7_val.json against the rule fixed in the ledger before the run; nothing here computes
# `test` (experiments/val_round_test.sh does, once, and only for a round marked passed).
source "$(dirname "$0")/round_lib.sh"
TRAIN_DIR=${TRAIN_DIR:-train}
mkdir -p "$RUN"

if [ ! -e "$RUN/trained" ]; then
    say "training $NAME (resumes from the last saved member-epoch): $*"
    "$DS" train classifier --labels $D/labels.csv --split $D/split.csv "$@" --out "$RUN/$TRAIN_DIR" --quiet
    touch "$RUN/trained"
fi

if [ ! -e "$RUN/labels_trval.csv" ]; then   # the train + val rows: what both indexes hold
    "$PY" experiments/split_labels.py $D/labels.csv $D/split.csv "$RUN/labels_trval.csv" train val
fi

# a new network has no fitted style weights ("learned" is the packaged model's), so it gets the paper's
# beta = 1/C_l with the shipped pooling; the rule's lines (cosine, head) do not depend on style settings
if [ ! -e "$RUN/$NAME-indexed" ]; then
    say "indexing train + val with $NAME's ensemble"
    "$DS" index "$RUN/labels_trval.csv" --index "$RUN/ham-$NAME" --weights "$RUN/$TRAIN_DIR/ensemble.safetensors" \
        --gram-pool lesion --gram-margin 0.05 --gram-norm l2 --gram-weights inverse-channels --quiet
    touch "$RUN/$NAME-indexed"
fi

if [ ! -e "$RUN/r7-indexed" ]; then
    say "indexing train + val with the shipped model (round 7), every default"
    "$DS" index "$RUN/labels_trval.csv" --index "$RUN/ham-r7" --quiet
    touch "$RUN/r7-indexed"
fi

# the paired compare on val (982 queries vs train); its JSON is its marker
evaluate_once "${NAME}_vs_r7_val" "$RUN/ham-r7" --compare "$RUN/ham-$NAME" --split $D/split.csv \
    --query-split val --candidate-split train

if [ "${COST:-0}" = 1 ] && [ ! -e "$RUN/cost" ]; then
    say "extraction cost against the packaged model"
    (cd benchmarks && "$PY" bench_ensemble_cost.py --candidate "$RUN/$TRAIN_DIR/ensemble.safetensors" \
        --images 32 --rounds 2 > "$RUN/cost.json.tmp") || exit 1
    mv "$RUN/cost.json.tmp" "$RUN/cost.json"
    touch "$RUN/cost"
fi
touch "$RUN/done"
say "done: read $RUN/${NAME}_vs_r7_val.json against the rule in docs/experiments.md"
