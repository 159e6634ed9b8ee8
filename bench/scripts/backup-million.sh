#!/usr/bin/env bash
# Backup time and size for a million keys: BACKUP into --backup-dir on the data's file
# system (hard links), BACKUP into another file system (copies), and the remote backup
# (logkv-server backup over loopback). Then the backup is served and its key count checked.
#
#   cargo build --release -p logkv-server
#   bench/scripts/backup-million.sh [KEYS] [VALUE_BYTES] [OTHER_FS_DIR]
#
# Needs redis-cli and python3 (which loads the keys with pipelined PUTs). OTHER_FS_DIR (default /dev/shm) must be on another file
# system than the temporary directory for the copy measurement; it is skipped otherwise.
set -euo pipefail
keys=${1:-1000000}
value_bytes=${2:-100}
other_fs=${3:-/dev/shm}
bin=${LOGKV_SERVER:-target/release/logkv-server}
port=${PORT:-17399}
work=$(mktemp -d "${TMPDIR:-/tmp}/logkv-backup-bench.XXXXXX")
other=""
if [ -d "$other_fs" ] && [ "$(stat -c %d "$other_fs")" != "$(stat -c %d "$work")" ]; then
    other=$(mktemp -d "$other_fs/logkv-backup-bench.XXXXXX")
fi
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work" ${other:+"$other"}
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
size() { du -sb --apparent-size "$1" | cut -f1; }
disk() { du -sb "$1" | cut -f1; }

"$bin" --data-dir "$work/data" --backup-dir "$work/backups" --listen "127.0.0.1:$port" \
    --fsync always 2>"$work/server.log" &
pids+=($!)
until redis-cli -p "$port" PING >/dev/null 2>&1; do sleep 0.1; done

t0=$(now)
python3 - "$keys" "$value_bytes" "$port" <<'PY'
# Pipelined PUTs over one connection, 10,000 per round trip.
import socket, sys
n, size, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
value = b"v" * size
batch = 10_000
for start in range(0, n, batch):
    count = min(batch, n - start)
    req = b"".join(
        b"*3\r\n$3\r\nPUT\r\n$12\r\n%s\r\n$%d\r\n%s\r\n" % (b"key.%08d" % i, size, value)
        for i in range(start, start + count))
    s.sendall(req)
    got = b""
    while got.count(b"\r\n") < count:
        chunk = s.recv(1 << 20)
        if not chunk:
            sys.exit("connection closed")
        got += chunk
    if b"-" in got[:1] or b"\r\n-" in got:
        sys.exit("an error reply: " + got[:200].decode(errors="replace"))
PY
t1=$(now)
echo "loaded $keys keys of $value_bytes-byte values in $(secs "$t0" "$t1") s (fsync always, pipelined PUTs)"
echo "data directory: $(disk "$work/data") bytes on disk"

t0=$(now)
redis-cli -p "$port" BACKUP local >"$work/local.reply"
t1=$(now)
both=$(du -sbc "$work/data" "$work/backups/local" | tail -1 | cut -f1)
echo "BACKUP (same file system, hard links): $(secs "$t0" "$t1") s, $(sed -n 6p "$work/local.reply") bytes, $((both - $(disk "$work/data"))) bytes of new disk space (du of data and backup together, less the data)"


t0=$(now)
"$bin" backup --from "127.0.0.1:$port" --to "$work/remote" >"$work/remote.out"
t1=$(now)
echo "logkv-server backup (remote, loopback): $(secs "$t0" "$t1") s, $(size "$work/remote") bytes"
sed 's/^/  /' "$work/remote.out"

if [ -n "$other" ]; then
    # BACKUP onto another file system: the same server over the same data, restarted with
    # --backup-dir there; the engine copies every file (EXDEV).
    kill "${pids[0]}"
    wait "${pids[0]}" 2>/dev/null || true
    "$bin" --data-dir "$work/data" --backup-dir "$other/backups" --listen "127.0.0.1:$port" \
        2>>"$work/server.log" &
    pids+=($!)
    until redis-cli -p "$port" PING >/dev/null 2>&1; do sleep 0.05; done
    t0=$(now)
    redis-cli -p "$port" BACKUP copied >"$work/copied.reply"
    t1=$(now)
    echo "BACKUP into $other_fs (another file system, copies): $(secs "$t0" "$t1") s, $(sed -n 6p "$work/copied.reply") bytes, $(disk "$other/backups/copied") bytes on disk"
fi

# The local backup, served: the same number of keys.
t0=$(now)
"$bin" --data-dir "$work/backups/local" --listen "127.0.0.1:$((port + 2))" 2>"$work/copy.log" &
pids+=($!)
until redis-cli -p "$((port + 2))" PING >/dev/null 2>&1; do sleep 0.05; done
t1=$(now)
echo "serving the backup: ready in $(secs "$t0" "$t1") s, keys: $(redis-cli -p "$((port + 2))" INFO | tr -d '\r' | sed -n 's/^keys://p')"
