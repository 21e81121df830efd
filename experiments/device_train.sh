#!/bin/bash
# One classifier run on the lent GPU machine (#17), from the repository root there:
#   device run, carry [".device-pack"], command:  bash experiments/device_train.sh TRAIN_ARGS...
# TRAIN_ARGS go to `dermsearch train classifier` after the packed --labels/--split (see
# experiments/device_pack.py pack). BUDGET (seconds, default 480) stops training early enough for
# the results to be sent back inside one call; a stopped run's log still comes back. What comes
# back in $OUT: train.log, run-json.tgz (config, metrics, history), and the ensemble split into 15 MiB parts
# with its sha256 (join them here with `python experiments/device_pack.py join FILES_AT --to F`).
set -u
PACK=${PACK:-.device-pack}
OUT=${OUT:-/tmp/device-out}
RUN=${RUN:-/tmp/device-run}
BUDGET=${BUDGET:-480}
mkdir -p "$OUT" "$RUN"
log() { echo "[device_train $(date -u +%T)] $*" | tee -a "$OUT/train.log"; }
[ -f "$PACK/data/labels.csv" ] || { log "no $PACK/data/labels.csv: run experiments/device_pack.py pack here first"; exit 2; }
if compgen -G "$PACK/wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$PACK"/wheels/*.whl || { log "wheel install failed"; exit 3; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/train.log"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" 2>&1 \
    | tee -a "$OUT/train.log"
log "train classifier $* (budget ${BUDGET} s)"
start=$(date +%s)
timeout --signal=INT --kill-after=20 "$BUDGET" python3 -m dermsearch.cli.main train classifier \
    --labels "$PACK/data/labels.csv" --split "$PACK/data/split.csv" --out "$RUN" --cache "$RUN/cache" "$@" \
    2>&1 | tee -a "$OUT/train.log"
rc=${PIPESTATUS[0]}
log "rc=$rc after $(( $(date +%s) - start )) s"
# at most 8 files come back: the JSONs travel as one archive, the ensemble (about 47 MB) as 4 parts
(cd "$RUN" && tar -czf "$OUT/run-json.tgz" $(ls config.json metrics.json history.json 2>/dev/null))
if [ -f "$RUN/ensemble.safetensors" ]; then
    (cd "$RUN" && sha256sum ensemble.safetensors) > "$OUT/ensemble.safetensors.sha256"
    split -b 15M "$RUN/ensemble.safetensors" "$OUT/ensemble.safetensors.part-"
fi
ls -la "$OUT" >> "$OUT/train.log"
exit "$rc"
