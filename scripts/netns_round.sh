#!/usr/bin/env bash
# A real multi-host round without Docker: the server and each agency run in
# their own Linux network namespace, with their own address, joined by a bridge.
#
#   sudo scripts/netns_round.sh [--agencies N] [--bets K] [--lottery PATH] [--keep-logs DIR]
#
# Everything lives in namespaces this script creates, named lotns<PID>-*:
#   lotns<PID>-sw    the "switch": a bridge br0 and one veth end per host
#   lotns<PID>-srv   the server, eth0 = 10.213.0.1/24
#   lotns<PID>-aI    agency I, eth0 = 10.213.0.(10+I)/24
# The root namespace is not touched: no link, address, route or NAT is added
# there, and the 10.213.0.0/24 addresses exist only inside these namespaces.
# Every exit path (success, failure, Ctrl-C, SIGTERM) stops the processes it
# started and deletes the namespaces (and with them the veths and the bridge).
#
# Exit status: 0 the round passed, 1 it failed, 2 bad usage,
# 77 a prerequisite is missing (not root, no `ip`, namespaces not permitted).
# Settable from the environment: NETNS_ROUND_IP (the iproute2 command), PYTHON,
# NETNS_ROUND_TIMEOUT (seconds the agencies get, default 60).
set -euo pipefail

readonly EXIT_FAIL=1 EXIT_USAGE=2 EXIT_SKIP=77
readonly SUBNET_PREFIX=10.213.0 PREFIX_LEN=24 PORT=12345 WINNING_NUMBER=7574
readonly PING_ATTEMPTS=30 PING_TIMEOUT=1 PING_PAUSE=0.3
readonly STOP_TIMEOUT=10
ROUND_TIMEOUT=${NETNS_ROUND_TIMEOUT:-60}
IP=${NETNS_ROUND_IP:-ip}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
RUN="lotns$$"
SW_NS="$RUN-sw"
SRV_NS="$RUN-srv"
SRV_ADDR="$SUBNET_PREFIX.1"

AGENCIES=3
BETS=500
LOTTERY=""
KEEP_LOGS=""

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

die() { # status message
    echo "netns_round: $2" >&2
    exit "$1"
}

# -- arguments --------------------------------------------------------------------------------

while (($#)); do
    case $1 in
    --agencies | --bets | --lottery | --keep-logs)
        (($# >= 2)) || die "$EXIT_USAGE" "$1 needs a value"
        case $1 in
        --agencies) AGENCIES=$2 ;;
        --bets) BETS=$2 ;;
        --lottery) LOTTERY=$2 ;;
        --keep-logs) KEEP_LOGS=$2 ;;
        esac
        shift 2
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "$EXIT_USAGE" "unknown argument: $1 (see --help)" ;;
    esac
done

if ! [[ $AGENCIES =~ ^[0-9]+$ ]] || ((AGENCIES < 1 || AGENCIES > 200)); then
    die "$EXIT_USAGE" "--agencies must be 1..200, not '$AGENCIES'"
fi
if ! [[ $BETS =~ ^[0-9]+$ ]] || ((BETS < 1)); then
    die "$EXIT_USAGE" "--bets must be 1 or more, not '$BETS'"
fi
if ! [[ $ROUND_TIMEOUT =~ ^[0-9]+$ ]] || ((ROUND_TIMEOUT < 1)); then
    die "$EXIT_USAGE" "NETNS_ROUND_TIMEOUT must be a whole number of seconds"
fi
if [[ -z $LOTTERY ]]; then
    if [[ -x $REPO/.venv/bin/lottery ]]; then
        LOTTERY=$REPO/.venv/bin/lottery
    else
        LOTTERY=$(command -v lottery) || die "$EXIT_USAGE" "no lottery command; pass --lottery PATH"
    fi
fi
[[ -x $LOTTERY ]] || die "$EXIT_USAGE" "--lottery $LOTTERY: not an executable"
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=$(dirname "$LOTTERY")/python
    [[ -x $PYTHON ]] || PYTHON=$(command -v python3) || die "$EXIT_USAGE" "no python3 found"
fi

# -- prerequisites (exit 77 with one line saying which) --------------------------------------

(($(id -u) == 0)) || die "$EXIT_SKIP" "skipped: needs root to create network namespaces"
command -v "$IP" >/dev/null 2>&1 || die "$EXIT_SKIP" "skipped: no '$IP' command (install iproute2)"

# -- clean-up, on every exit path -------------------------------------------------------------

CREATED_NS=() # namespaces we created, in creation order
PIDS=()       # processes we started
TMP=""

stop_pids() { # signal pid... : send signal, wait up to STOP_TIMEOUT s, then SIGKILL
    local sig=$1 pid deadline
    shift
    (($#)) || return 0
    kill "-$sig" "$@" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# shellcheck disable=SC2317  # reached through the trap below
cleanup() {
    local status=$? ns i leftover
    trap - EXIT INT TERM
    set +e
    # Our own processes first, then anything else still inside our namespaces
    # (only we put processes there), so the namespaces can really go away.
    local alive=()
    for i in "${PIDS[@]}"; do kill -0 "$i" 2>/dev/null && alive+=("$i"); done
    stop_pids TERM "${alive[@]}"
    for ((i = ${#CREATED_NS[@]} - 1; i >= 0; i--)); do
        ns=${CREATED_NS[i]}
        mapfile -t leftover < <("$IP" netns pids "$ns" 2>/dev/null)
        ((${#leftover[@]})) && kill -KILL "${leftover[@]}" 2>/dev/null
        # Deleting a namespace destroys the veth ends in it (and so their
        # peers) and, for the switch, the bridge.
        "$IP" netns delete "$ns" 2>/dev/null ||
            echo "netns_round: could not delete namespace $ns" >&2
    done
    if "$IP" netns list 2>/dev/null | grep -q "^$RUN-"; then
        echo "netns_round: namespaces left behind:" "$("$IP" netns list | grep "^$RUN-")" >&2
        ((status == 0)) && status=$EXIT_FAIL
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ -n $KEEP_LOGS ]]; then
            mkdir -p "$KEEP_LOGS" && cp -p "$TMP"/*.log "$KEEP_LOGS"/ 2>/dev/null &&
                echo "netns_round: logs kept in $KEEP_LOGS"
        fi
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'echo "netns_round: interrupted, cleaning up" >&2; exit 130' INT
trap 'echo "netns_round: terminated, cleaning up" >&2; exit 143' TERM

add_ns() { # name
    local err
    if ! err=$("$IP" netns add "$1" 2>&1); then
        ((${#CREATED_NS[@]} == 0)) &&
            die "$EXIT_SKIP" "skipped: cannot create a network namespace: ${err//$'\n'/ }"
        die "$EXIT_FAIL" "ip netns add $1: ${err//$'\n'/ }"
    fi
    CREATED_NS+=("$1")
    "$IP" -n "$1" link set lo up
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/$RUN.XXXXXX")

# -- the network: a switch namespace with a bridge, one veth per host -------------------------

add_ns "$SW_NS"
err=$("$IP" -n "$SW_NS" link add br0 type bridge 2>&1) ||
    die "$EXIT_SKIP" "skipped: cannot create a bridge: ${err//$'\n'/ }"
"$IP" -n "$SW_NS" link set br0 up

plug() { # namespace port address: a host namespace with eth0=address, wired to switch port
    local ns=$1 port=$2 addr=$3 err
    add_ns "$ns"
    # Both ends are born in the switch namespace (never in the root one); the
    # host end moves to its namespace and is called eth0 there.
    err=$("$IP" -n "$SW_NS" link add "$port" type veth peer name "h$port" 2>&1) ||
        die "$EXIT_SKIP" "skipped: cannot create a veth pair: ${err//$'\n'/ }"
    "$IP" -n "$SW_NS" link set "h$port" netns "$ns"
    "$IP" -n "$ns" link set "h$port" name eth0
    "$IP" -n "$ns" addr add "$addr/$PREFIX_LEN" dev eth0
    "$IP" -n "$ns" link set eth0 up
    "$IP" -n "$SW_NS" link set "$port" master br0
    "$IP" -n "$SW_NS" link set "$port" up
}

agency_ns() { echo "$RUN-a$1"; }
agency_addr() { echo "$SUBNET_PREFIX.$((10 + $1))"; }

plug "$SRV_NS" psrv "$SRV_ADDR"
for ((i = 1; i <= AGENCIES; i++)); do
    plug "$(agency_ns "$i")" "pa$i" "$(agency_addr "$i")"
done

# -- data: agency I gets I mod 4 winners (1, 2, 3, 0, 1, ...), at most K -----------------------

winners_list=""
for ((i = 1; i <= AGENCIES; i++)); do
    w=$((i % 4))
    ((w > BETS)) && w=$BETS
    winners_list+="${winners_list:+,}$w"
done
"$PYTHON" "$HERE/gen_dataset.py" --out "$TMP/bets" --agencies "$AGENCIES" --bets "$BETS" \
    --winners "$winners_list" --winning-number "$WINNING_NUMBER" >/dev/null

expected_winners() { # file: the documents of the rows holding the winning number, sorted
    "$PYTHON" - "$1" "$WINNING_NUMBER" <<'EOF'
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as f:
    print(" ".join(sorted(row[2] for row in csv.reader(f) if row[4] == sys.argv[2])))
EOF
}

# -- the round ----------------------------------------------------------------------------------

"$IP" netns exec "$SRV_NS" "$LOTTERY" server --host "$SRV_ADDR" --port "$PORT" \
    --agencies "$AGENCIES" --data-dir "$TMP/data" --winning-number "$WINNING_NUMBER" \
    >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")

# Ping from agency 1's namespace: success proves the path across the bridge.
reachable=0 attempts=0
while ((attempts < PING_ATTEMPTS)); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    attempts=$((attempts + 1))
    if "$IP" netns exec "$(agency_ns 1)" "$LOTTERY" ping --timeout "$PING_TIMEOUT" \
        "$SRV_ADDR:$PORT" >"$TMP/ping.log" 2>&1; then
        reachable=1
        break
    fi
    sleep "$PING_PAUSE"
done
if ((!reachable)); then
    echo "netns_round: server $SRV_ADDR:$PORT not reachable from $(agency_ns 1)" \
        "after $attempts attempts; last ping: $(cat "$TMP/ping.log" 2>/dev/null)" >&2
    echo "--- server log ---" >&2
    tail -n 20 "$TMP/server.log" >&2
    echo "FAIL"
    exit "$EXIT_FAIL"
fi

AGENCY_PIDS=()
started_ns=$(date +%s%N)
for ((i = 1; i <= AGENCIES; i++)); do
    "$IP" netns exec "$(agency_ns "$i")" "$LOTTERY" agency --id "$i" \
        --server "$SRV_ADDR:$PORT" --bets "$TMP/bets/agency-$i.csv" \
        >"$TMP/agency-$i.log" 2>&1 &
    AGENCY_PIDS+=("$!")
    PIDS+=("$!")
done

deadline=$((SECONDS + ROUND_TIMEOUT))
timed_out=0
while ((SECONDS < deadline)); do
    running=0
    for pid in "${AGENCY_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    ((running)) || break
    sleep 0.2
done
for pid in "${AGENCY_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
        timed_out=1
        stop_pids TERM "$pid"
    fi
done
round_ms=$((($(date +%s%N) - started_ns) / 1000000))

AGENCY_STATUS=()
for pid in "${AGENCY_PIDS[@]}"; do
    if wait "$pid"; then AGENCY_STATUS+=(0); else AGENCY_STATUS+=("$?"); fi
done

if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    stop_deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$SERVER_PID" 2>/dev/null && ((SECONDS < stop_deadline)); do sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
fi
if wait "$SERVER_PID"; then server_status=0; else server_status=$?; fi

# -- checks and summary -------------------------------------------------------------------------

ok=1
fail() {
    ok=0
    echo "  FAIL: $*"
}

echo "netns round $RUN: switch $SW_NS (bridge br0, $SUBNET_PREFIX.0/$PREFIX_LEN)," \
    "$AGENCIES agencies x $BETS bets, round $((round_ms / 1000)).$(printf %03d $((round_ms % 1000)))s"
echo "  server    $SRV_NS  $SRV_ADDR:$PORT  exit $server_status"
((server_status == 0)) || fail "server exited $server_status after SIGTERM"
((timed_out)) && fail "agencies still running after ${ROUND_TIMEOUT}s were stopped"
total_winners=0
for ((i = 1; i <= AGENCIES; i++)); do
    log="$TMP/agency-$i.log"
    addr=$(agency_addr "$i")
    status=${AGENCY_STATUS[i - 1]}
    expected=$(expected_winners "$TMP/bets/agency-$i.csv")
    got=$(awk -F ' [|] ' '/action: ganadores [|] result: success/ {
        for (f = 1; f <= NF; f++) if ($f ~ /^dnis: /) { sub(/^dnis: /, "", $f); print $f; exit } }' \
        "$log")
    [[ $got == "-" ]] && got=""
    got=$(tr ' ' '\n' <<<"$got" | sed '/^$/d' | sort | paste -sd ' ' -)
    n_expected=$(wc -w <<<"$expected")
    n_got=$(wc -w <<<"$got")
    total_winners=$((total_winners + n_got))
    grep -q 'action: ganadores | result: success' "$log" || n_got="?"
    printf '  agency %-2s %s  %s  exit %s  winners %s (expected %s)\n' \
        "$i" "$(agency_ns "$i")" "$addr" "$status" "$n_got" "$n_expected"
    ((status == 0)) || fail "agency $i exited $status; its last line: $(tail -n 1 "$log")"
    if ! grep -q 'action: ganadores | result: success' "$log"; then
        fail "agency $i logged no 'action: ganadores | result: success' line"
    elif [[ $got != "$expected" ]]; then
        fail "agency $i winners [$got], expected [$expected]"
    fi
    # The server must have seen this agency come from its own address.
    grep 'action: handshake | result: success' "$TMP/server.log" |
        grep -F "ip: $addr " | grep -qE "agencia: $i( |$)" ||
        fail "server log has no handshake of agency $i from $addr"
done

if ((ok)); then
    echo "PASS: $AGENCIES agencies in $AGENCIES namespaces, $total_winners winners as generated"
    exit 0
fi
echo "FAIL"
exit "$EXIT_FAIL"
