#!/usr/bin/env bash
# Run the fedcity + Flower example app, offline, on this machine.
#
#   examples/flower/run.sh simulation   # Flower's simulation engine (Ray), 3 virtual nodes
#   examples/flower/run.sh deployment   # flower-superlink + 3 flower-supernode processes
#
# Both deal a fresh 2-of-3 threshold key (and, for signed updates, an Ed25519 signing key per
# node) with fedcity's dealer into $WORK/keys (outside the
# app directory: the app bundle must not carry key files), start a SuperLink on loopback,
# submit the app with `flwr run`, stream its logs and stop every process the script started.
# Runtime installation of app dependencies (`uv sync`, which needs the network) is off:
# FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 for the SuperLink (SuperNodes leave it off
# by default in Flower 1.41); the apps run in this virtualenv, which has fedcity installed.
#
# Environment: PYTHON_BIN (default .venv/bin of the repository), KEY_BITS (default 2048),
# ROUNDS (default 3), WORK (default a new temporary directory), PORT (default 39191),
# EVALUATE (fraction of nodes evaluating, default 1.0), RECORD_DIR (where the ServerApp writes
# the train replies it received; default none).
set -euo pipefail

MODE="${1:-simulation}"
case "$MODE" in simulation|deployment) ;; *) echo "usage: $0 simulation|deployment" >&2; exit 2;; esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="${PYTHON_BIN:-$REPO/.venv/bin}"
KEY_BITS="${KEY_BITS:-2048}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-39191}"
EVALUATE="${EVALUATE:-1.0}"
RECORD_DIR="${RECORD_DIR:-}"
WORK="${WORK:-$(mktemp -d -t fedcity-flower-XXXXXX)}"
export FLWR_HOME="$WORK/flwr-home"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_DISABLE_UPDATE_CHECK=1
export PATH="$BIN:$PATH"
mkdir -p "$FLWR_HOME" "$WORK/logs"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

echo "== dealing a 2-of-3 ${KEY_BITS}-bit threshold key and signing keys into $WORK/keys"
"$BIN/python" -m fedcity.flower deal "$WORK/keys" --nodes 3 --threshold 2 --key-bits "$KEY_BITS" \
  --signed

cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "$MODE"

[superlink.simulation]
address = "127.0.0.1:$PORT"
insecure = true
options.num-supernodes = 3

[superlink.deployment]
address = "127.0.0.1:$PORT"
insecure = true
TOML

SIM_FLAG=()
[ "$MODE" = simulation ] && SIM_FLAG=(--simulation)
echo "== starting flower-superlink ($MODE) on 127.0.0.1:$PORT"
"$BIN/flower-superlink" --insecure "${SIM_FLAG[@]}" --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$PORT" >"$WORK/logs/superlink.log" 2>&1 &
PIDS+=($!)

if [ "$MODE" = deployment ]; then
  for i in 0 1 2; do
    echo "== starting flower-supernode node-$i (key $WORK/keys/nodes/node-$i/key.json)"
    "$BIN/flower-supernode" --insecure --superlink "127.0.0.1:$PORT" \
      --port $((PORT + 10 + i)) \
      --node-config "partition-id=$i num-partitions=3 fedcity-key=\"$WORK/keys/nodes/node-$i/key.json\"" \
      >"$WORK/logs/supernode-$i.log" 2>&1 &
    PIDS+=($!)
  done
fi

for _ in $(seq 100); do
  if "$BIN/python" - "$PORT" <<'PY' 2>/dev/null
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
PY
  then break; fi
  sleep 0.2
done

echo "== flwr run ($MODE, $ROUNDS rounds)"
START=$(date +%s)
"$BIN/flwr" run "$HERE" "$MODE" --stream \
  --run-config "num-server-rounds=$ROUNDS fedcity-public-key=\"$WORK/keys/public.json\" fedcity-key-dir=\"$WORK/keys\" fraction-evaluate=$EVALUATE fedcity-record-dir=\"$RECORD_DIR\"" \
  2>&1 | tee "$WORK/logs/run.log"
echo "== finished in $(( $(date +%s) - START )) s; logs in $WORK/logs"
grep -q "FEDCITY-SUMMARY" "$WORK/logs/run.log"
