#!/usr/bin/env bash
# ECOS over Flower's deployment engine on this machine: one SuperLink (the cloud), N SuperNodes (the devices),
# `flwr run .`; then the proxy set's sha1 is checked against the in-process run of the same settings
# (`python -m ecos_pl.flower.run_config`, the pipeline train.py builds), and the wall time and the bytes on the
# wire are printed. Every process it starts is stopped on exit, by PID, with all its descendants (the SuperLink
# starts a flower-superexec in a session of its own, so a process group would not catch it).
#
#   bash benchmarks/flower_local_deployment.sh                 # 3 SuperNodes, plain answers (noise on each device)
#   SECAGG=true bash benchmarks/flower_local_deployment.sh     # the scores summed by SecAgg+ (exact counts)
#   N=5 RUN_CONFIG='n-centroids=32 budget=100' bash benchmarks/flower_local_deployment.sh
#
# Env: N (3), SECAGG (false), RUN_CONFIG (train.py's keys as `flwr run -c` takes them; default: a small run on
# digits_lite with PCA φ), PORT (19100: the SuperLink; PORT+1: the byte meter; PORT+10+i: SuperNode i's runtime
# API), TIMEOUT (900 s for the whole run). Known traps (issue 15): `flwr run . local` gives up after 15 s when the
# SuperLink it starts imports slowly, so the SuperLink is started here and waited for; each SuperNode starts one
# flwr-clientapp per message, which must check in within 30 s, so on a loaded machine the run can stall:
# run it under `flock /tmp/ecos-cpu.lock` next to other heavy jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-3}
SECAGG=${SECAGG:-false}
PORT=${PORT:-19100}
TIMEOUT=${TIMEOUT:-900}
METER_PORT=$((PORT + 1))
if [[ "$SECAGG" == true ]]; then
  # SecAgg+ sums integers: the device rounds its noisy counts, so only exact counts meet the in-process proxy set
  DEFAULT_RUN='n-centroids=12 budget=60 seed=3 epsilon="none" client-cap="none" overrides="phi=pca phi.n_components=16"'
else
  DEFAULT_RUN='n-centroids=12 budget=60 seed=3 overrides="phi=pca phi.n_components=16"'
fi
RUN_CONFIG=${RUN_CONFIG:-$DEFAULT_RUN}

export FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=offline
export ECOS_CACHE=${ECOS_CACHE:-$HOME/.cache/ecos-pl}
uv sync --quiet --extra flower
export PATH="$PWD/.venv/bin:$PATH"  # the SuperLink starts flower-superexec, the SuperNodes flwr-clientapp, by name
WORK=$(mktemp -d -t ecos-flower-XXXXXX)
export FLWR_HOME="$WORK/flwr-home"  # flwr's own config (the SuperLink connection below) and unpacked apps
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "ecos-local"

[superlink.ecos-local]
address = "127.0.0.1:$PORT"
insecure = true
EOF

STARTED=()
descendants() { local pid=$1 child; for child in $(pgrep -P "$pid" || true); do descendants "$child"; done; echo "$pid"; }
stop_all() {
  local pids=() pid
  for pid in "${STARTED[@]}"; do pids+=($(descendants "$pid")); done
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}
on_exit() {
  local code=$?
  stop_all
  if ((code)); then echo "failed (exit $code); logs in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap on_exit EXIT
start() { local log=$1; shift; "$@" >"$WORK/$log" 2>&1 & STARTED+=($!); }
wait_for_log() {  # file, pattern, seconds
  local i
  for ((i = 0; i < $3 * 2; i++)); do grep -q "$2" "$WORK/$1" 2>/dev/null && return 0; sleep 0.5; done
  echo "no '$2' in $1 within $3 s:" >&2; tail -20 "$WORK/$1" >&2; return 1
}

lo_before=$(cat /sys/class/net/lo/statistics/tx_bytes)
t0=$(date +%s.%N)
start superlink.log flower-superlink --insecure --disable-runtime-dependency-installation --host 127.0.0.1 --port "$PORT"
start meter.log python benchmarks/tcp_meter.py "$METER_PORT" "$PORT" "$WORK/meter.json"
METER=${STARTED[-1]}
wait_for_log superlink.log "Uvicorn running" 180
for ((i = 0; i < N; i++)); do
  start "supernode-$i.log" flower-supernode --insecure --superlink "127.0.0.1:$METER_PORT" \
    --port $((PORT + 10 + i)) --node-config "client-index=$i seed=$((3000 + i))"  # the device's own seed: train.py's seed·1000+i at seed=3, so the proxy set is the in-process one
done
t_up=$(date +%s.%N)

OUT="$WORK/out"
timeout "$TIMEOUT" flwr run . ecos-local --stream \
  --run-config "$RUN_CONFIG clients=$N min-answers=$N secagg=$SECAGG out=\"$OUT\"" >"$WORK/run.log" 2>&1 || {
  echo "flwr run failed:" >&2; tail -30 "$WORK/run.log" >&2; exit 1; }
t1=$(date +%s.%N)
[[ -f "$OUT/proxy_set.json" ]] || { echo "the ServerApp wrote no proxy set:" >&2; tail -30 "$WORK/run.log" >&2; exit 1; }
kill -TERM "$METER"; wait "$METER" 2>/dev/null || true
grep -h "ECOS over Flower:\|SecAgg+ round:" "$WORK/run.log" | sed 's/^/  cloud log: /' || true
lo_after=$(cat /sys/class/net/lo/statistics/tx_bytes)

reference=$(python -m ecos_pl.flower.run_config -c "$RUN_CONFIG clients=$N")
fab=$(python -c "from pathlib import Path; from flwr.cli.build import build_fab_from_disk; print(len(build_fab_from_disk(Path('.'))))")
python - "$OUT/proxy_set.json" "$WORK/meter.json" "$reference" "$t0" "$t_up" "$t1" "$((lo_after - lo_before))" "$N" "$SECAGG" "$fab" <<'EOF'
import json, sys
flower, meter = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
reference = json.loads(sys.argv[3])
t0, t_up, t1, lo, n = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
print(f"ECOS over Flower, local deployment: {n} SuperNodes, secagg={sys.argv[9]}")
print(f"  wall time {t1 - t0:.1f} s (SuperLink up and {n} SuperNodes started: {t_up - t0:.1f} s; flwr run: {t1 - t_up:.1f} s; "
      f"the ECOS round inside the ServerApp: {flower['round_seconds']:.1f} s)")
print(f"  ECOS payload: {flower['bytes_down']} B down to each client, {flower['bytes_up']} B up from {flower['n_clients']} clients")
print(f"  SuperNodes <-> SuperLink on the wire (TCP payload, HTTP and polling included): {meter['up']:,} B up, "
      f"{meter['down']:,} B down ({n} × the app bundle, {int(sys.argv[10]):,} B, among them), {meter['connections']} connections")
print(f"  everything on loopback meanwhile (flwr run's upload, ServerApp/ClientApp processes, the meter's relay): {lo:,} B")
print(f"  client ε: {flower.get('client_epsilons') or flower['epsilon']}")
same = flower["proxy_set_sha1"] == reference["proxy_set_sha1"]
print(f"  proxy set {flower['proxy_set_sha1']} ({flower['n_selected']} samples); in process: {reference['proxy_set_sha1']} "
      f"-> {'identical' if same else 'DIFFERENT'}")
sys.exit(0 if same else 1)
EOF
