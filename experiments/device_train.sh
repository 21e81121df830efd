#!/bin/bash
# One classifier run on the lent GPU machine (#17), from the repository root there:
#   device run, carry [".device-pack"], command:  bash experiments/device_train.sh TRAIN_ARGS...
# TRAIN_ARGS go to `dermsearch train classifier` after the packed --labels/--split and --out/--cache
# in $RUN (set RUN=, not --out). Only a finished run yields an ensemble: its members' checkpoints
# stay on the machine, which a later call does not get back, so size the epochs to end inside
# BUDGET (seconds, default 480; DRY_RUN=1 first logs `--dry-run`'s estimate for the same
# arguments). A run stopped by BUDGET exits 75 and sends back its log. What comes back in $OUT
# (at most 8 files of 16 MiB): train.log, run-json.tgz (config, metrics, history), and the
# ensemble in 15 MiB parts with its sha256 (here: `python experiments/device_pack.py join FILES_AT --to F`).
set -u
PACK=${PACK:-.device-pack}
OUT=${OUT:-/tmp/device-out}
RUN=${RUN:-/tmp/device-run}
BUDGET=${BUDGET:-480}
mkdir -p "$OUT" "$RUN"
# a warm machine keeps RUN between calls: never send back an earlier call's results
rm -f "$RUN"/{ensemble.safetensors,config.json,metrics.json,history.json}   # members/ and cache/ stay: resumable
log() { echo "[device_train $(date -u +%T)] $*" | tee -a "$OUT/train.log"; }
[ -f "$PACK/data/labels.csv" ] || { log "no $PACK/data/labels.csv: run experiments/device_pack.py pack here first"; exit 2; }
if compgen -G "$PACK/wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$PACK"/wheels/*.whl >> "$OUT/train.log" 2>&1 || { log "wheel install failed"; exit 3; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"; } 2>&1 \
    | tee -a "$OUT/train.log"
train=(python3 -m dermsearch.cli.main train classifier --labels "$PACK/data/labels.csv"
       --split "$PACK/data/split.csv" --out "$RUN" --cache "$RUN/cache")
if [ "${DRY_RUN:-0}" = 1 ]; then
    log "dry run: $*"
    timeout 120 "${train[@]}" "$@" --dry-run 2>&1 | tee -a "$OUT/train.log"
fi
log "train classifier $* (budget ${BUDGET} s)"
start=$(date +%s)
timeout --signal=INT --kill-after=20 "$BUDGET" "${train[@]}" "$@" 2>&1 | tee -a "$OUT/train.log"
rc=${PIPESTATUS[0]}
log "rc=$rc after $(( $(date +%s) - start )) s"
json=$(cd "$RUN" && ls config.json metrics.json history.json 2>/dev/null)
[ -n "$json" ] && (cd "$RUN" && tar -czf "$OUT/run-json.tgz" $json)
if [ -f "$RUN/ensemble.safetensors" ]; then
    size=$(stat -c %s "$RUN/ensemble.safetensors")
    (( size > 60 * 1024 * 1024 )) && log "ensemble of $size bytes: more than 60 MiB may not all come back (8 files, 64 MiB)"
    (cd "$RUN" && sha256sum ensemble.safetensors) > "$OUT/ensemble.safetensors.sha256"
    split -b 15M "$RUN/ensemble.safetensors" "$OUT/ensemble.safetensors.part-"
fi
ls -la "$OUT" >> "$OUT/train.log"
case "$rc" in
    124|137) log "stopped by BUDGET (${BUDGET} s): nothing to join"; exit 75 ;;
    *) exit "$rc" ;;
esac
