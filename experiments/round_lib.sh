# Sourced by experiments/val_round.sh and val_round_test.sh (issue #17): their shared settings and steps.
# Needs RUN (the run folder) and NAME (the variant, e.g. r14); PY and DS may name another python/dermsearch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${RUN:?set RUN to the run folder}" "${NAME:?set NAME, e.g. r14}"
RUN=$(realpath -m "$RUN")
D=../shared/data/ham10000
PY=$(realpath -s "${PY:-.venv/bin/python}")   # -s: a venv's python is a symlink; resolved, it loses the venv
DS=$(realpath -s "${DS:-.venv/bin/dermsearch}")
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

evaluate_once() {   # evaluate_once FILE ARGS...: dermsearch evaluate ARGS --json > $RUN/FILE.json, atomically, once
    local name=$1; shift
    if [ ! -e "$RUN/$name.json" ]; then
        say "$name"
        "$DS" evaluate "$@" --json > "$RUN/$name.json.tmp"
        mv "$RUN/$name.json.tmp" "$RUN/$name.json"
    fi
}
