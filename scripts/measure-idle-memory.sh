#!/usr/bin/env bash
# Idle memory of the seven services started by `slipway up` (run after `make demo`, release build:
# `make demo CONFIG=release`). Prints each service's RSS, PSS (shared pages divided among the
# processes sharing them) and anonymous memory, and the totals. RSS counts the shared libraries
# (libswiftCore, Foundation, ICU) once per process; PSS counts them once in all, which is what the
# seven cost the machine together.
#   scripts/measure-idle-memory.sh [SETTLE_SECONDS]
set -euo pipefail
sleep "${1:-10}"
printf '%-18s %8s %8s %8s %8s\n' service "RSS KiB" "PSS KiB" "anon KiB" threads
rss=0; pss=0; anon=0
for name in gateway pipeline builder network cluster certs logs; do
  pid=$(pgrep -f "/slipway-$name( |$)" | head -1 || true)
  [ -n "$pid" ] || { echo "slipway-$name is not running (make demo first)" >&2; exit 1; }
  read -r r p a < <(awk '/^Rss:/{r=$2} /^Pss:/{p=$2} /^Anonymous:/{a=$2} END{print r, p, a}' "/proc/$pid/smaps_rollup")
  t=$(awk '/^Threads:/{print $2}' "/proc/$pid/status")
  printf '%-18s %8d %8d %8d %8d\n' "slipway-$name" "$r" "$p" "$a" "$t"
  rss=$((rss + r)); pss=$((pss + p)); anon=$((anon + a))
done
printf '%-18s %8d %8d %8d\n' total "$rss" "$pss" "$anon"
printf 'together: RSS %d MiB (shared libraries counted 7 times), PSS %d MiB, anonymous %d MiB\n' $((rss / 1024)) $((pss / 1024)) $((anon / 1024))
