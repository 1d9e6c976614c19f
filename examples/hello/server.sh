#!/bin/sh
# A small HTTP server: busybox httpd serving /app/www on $PORT (the port the platform assigns).
# /health answers for readiness probes; the page shows which version runs.
set -e
echo "ok" > /app/www/health
sed -i "s/__VERSION__/${APP_VERSION:-dev}/" /app/www/index.html 2>/dev/null || true
echo "hello: listening on port ${PORT:-8080}"
# Not exec'd: as PID 1, httpd would ignore SIGTERM. The shell stops it on SIGTERM and exits, so a
# rollout's old instances stop at once instead of waiting out the grace period.
httpd -f -v -p "0.0.0.0:${PORT:-8080}" -h /app/www &
server=$!
trap 'kill -TERM "$server"; wait "$server" || true; echo "hello: stopped"; exit 0' TERM INT
wait "$server"
