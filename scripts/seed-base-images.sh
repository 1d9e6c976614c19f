#!/usr/bin/env bash
# Seeds an OCI registry with base images built on this machine, for machines that reach no public
# registry: slipway/busybox (busybox-static, ~2 MB) always; slipway/debian (debootstrap, minbase)
# with --debian.
#   scripts/seed-base-images.sh [--debian] [REGISTRY]      REGISTRY defaults to 127.0.0.1:5000 (plain HTTP)
# Images are skipped when the registry already has them. Needs buildah and busybox-static (root).
# A registry that wants credentials (slipway up's does): REGISTRY_AUTH_FILE=<data>/registry/auth.json,
# the containers-auth.json that buildah reads too.
set -euo pipefail

debian=0
if [ "${1:-}" = --debian ]; then debian=1; shift; fi
registry=${1:-127.0.0.1:5000}
storage=${SLIPWAY_SEED_STORAGE:-${TMPDIR:-/tmp}/slipway-seed-storage}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/registries.conf" <<CONF
unqualified-search-registries = []
[[registry]]
location = "$registry"
insecure = true
CONF
export CONTAINERS_REGISTRIES_CONF="$work/registries.conf"
buildah=(buildah --storage-driver vfs --root "$storage/storage" --runroot "$storage/run")

curl_auth=()
if [ -n "${REGISTRY_AUTH_FILE:-}" ]; then
  login=$(python3 -c 'import base64, json, sys; a = json.load(open(sys.argv[1]))["auths"]; print(base64.b64decode(a[sys.argv[2]]["auth"]).decode())' "$REGISTRY_AUTH_FILE" "$registry")
  # A curl config file, not -u: the password stays off the command line.
  printf 'user = "%s"\n' "$login" > "$work/curl-auth"
  chmod 600 "$work/curl-auth"
  curl_auth=(-K "$work/curl-auth")
fi
has() { curl -sf "${curl_auth[@]}" -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' "http://$registry/v2/$1/manifests/$2"; }

# sed reads all of busybox's output (no SIGPIPE under pipefail) and keeps line 1's version.
busybox_version=$(/bin/busybox 2>&1 | sed -n '1s/^BusyBox v\([0-9.]*\).*/\1/p')
if has slipway/busybox "$busybox_version" && has slipway/busybox latest; then
  echo "slipway/busybox:$busybox_version already in $registry"
else
  [ -x /bin/busybox ] || { echo "error: /bin/busybox missing: apt-get install busybox-static" >&2; exit 1; }
  mkdir -p "$work/busybox"
  cp /bin/busybox "$work/busybox/busybox"
  cat > "$work/busybox/Containerfile" <<'CF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
CF
  "${buildah[@]}" bud --quiet --isolation chroot -t "$registry/slipway/busybox:$busybox_version" "$work/busybox" >/dev/null
  "${buildah[@]}" tag "$registry/slipway/busybox:$busybox_version" "$registry/slipway/busybox:latest"
  for tag in "$busybox_version" latest; do
    "${buildah[@]}" push --quiet "$registry/slipway/busybox:$tag" "docker://$registry/slipway/busybox:$tag"
  done
  echo "seeded $registry/slipway/busybox:$busybox_version (and :latest)"
fi

if [ "$debian" = 1 ]; then
  if has slipway/debian bookworm; then
    echo "slipway/debian:bookworm already in $registry"
  else
    command -v debootstrap >/dev/null || { echo "error: debootstrap missing: apt-get install debootstrap" >&2; exit 1; }
    debootstrap --variant=minbase bookworm "$work/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
    tar -C "$work/rootfs" -c . > "$work/rootfs.tar"
    container=$("${buildah[@]}" from scratch)
    "${buildah[@]}" add "$container" "$work/rootfs.tar" /
    "${buildah[@]}" config --cmd /bin/bash "$container"
    "${buildah[@]}" commit --quiet "$container" "$registry/slipway/debian:bookworm" >/dev/null
    "${buildah[@]}" rm "$container" >/dev/null
    "${buildah[@]}" push --quiet "$registry/slipway/debian:bookworm" "docker://$registry/slipway/debian:bookworm"
    echo "seeded $registry/slipway/debian:bookworm"
  fi
fi
