#!/usr/bin/env bash
# Build the kexec image from deploy/Dockerfile without a Docker engine (DESIGN.md §3, §5):
#
#   1. a Debian bookworm base made from Debian's packages by `mmdebstrap --variant=essential`
#      (python3 and the few shared libraries the wheels need), cached by its inputs;
#   2. `buildah bud --isolation chroot -f deploy/Dockerfile` on that base;
#   3. the result as an OCI archive plus its unpacked root filesystem (for `bwrap`), under a
#      cache directory keyed by the sources: an unchanged tree skips the build.
#
#   hack/build-image.sh              # progress on stderr; the LAST TWO stdout lines are
#                                    # the OCI archive's path and the root filesystem's path
#                                    # (its sibling config.json: the image's Env, Entrypoint,
#                                    # Cmd, User, WorkingDir)
#   read -r ARCHIVE ROOTFS < <(hack/build-image.sh | tail -n 2 | paste -sd' ')
#
# Installs mmdebstrap, buildah and bubblewrap with apt-get when missing (needs root or sudo).
# Load the archive elsewhere with e.g. `skopeo copy oci-archive:PATH docker://REGISTRY/kexec:TAG`
# or `podman load -i PATH`. Environment: KEXEC_IMAGE_CACHE (default ~/.cache/kexec/image),
# KEXEC_IMAGE_KEEP (build directories kept, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${KEXEC_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kexec/image}
KEEP=${KEXEC_IMAGE_KEEP:-3}
log() { printf 'build-image: %s (%ss)\n' "$*" "$SECONDS" >&2; }

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "build-image: needs root (mmdebstrap, buildah) and there is no sudo" >&2; exit 1
  fi
fi

# --- tools ---------------------------------------------------------------------------------
missing=()
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if ((${#missing[@]})); then
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one build at a time; a waiting caller then finds the finished build

# --- 1. the Debian bases -------------------------------------------------------------------
# runtime: python3 and the shared libraries the wheels need (checked with ldd: regopy links
# libstdc++ and libatomic; the rest only libc/libgcc_s). build: the same plus a pip
# (python3.11-venv's ensurepip) and strip (binutils), used by the Dockerfile's build stage
# only. The merged-usr hook installs the usr-is-merged marker instead of usrmerge (which
# pulls in perl, ~50 MB).
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
RUNTIME_PACKAGES=python3-minimal,libpython3.11-stdlib,libstdc++6,libatomic1,ca-certificates
BUILD_PACKAGES=$RUNTIME_PACKAGES,python3.11-venv,binutils
MM_ARGS=(
  --variant=essential
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*'
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*'
)
base_key() { printf '%s\n' v1 "$SUITE" "$MIRROR" "$1" "${MM_ARGS[@]}" | sha256sum | cut -c1-16; }
runtime_key=$(base_key "$RUNTIME_PACKAGES")
build_key=$(base_key "$BUILD_PACKAGES")
make_base() { # key packages
  local tar="$CACHE/base-$1.tar"
  [[ -f $tar && -s $tar ]] && return 0
  log "Debian base $1: mmdebstrap $SUITE --include=$2"
  $SUDO rm -rf "$tar" "$tar.tmp"
  $SUDO mmdebstrap --quiet --format=tar "${MM_ARGS[@]}" --include="$2" "$SUITE" "$tar.tmp" "$MIRROR" >&2
  mv "$tar.tmp" "$tar"
}
make_base "$runtime_key" "$RUNTIME_PACKAGES" &
runtime_pid=$!
make_base "$build_key" "$BUILD_PACKAGES"
wait "$runtime_pid"

# --- 2. the image --------------------------------------------------------------------------
# The key covers everything that reaches the image: the build context the Dockerfile copies
# (see .dockerignore), the Dockerfile, this script and the base.
src_key=$(
  {
    echo "$runtime_key $build_key"
    find pyproject.toml README.md src policies deploy/Dockerfile .dockerignore hack/build-image.sh \
      -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)
out="$CACHE/kexec-$src_key"
if [[ -f $out/done ]]; then
  log "up to date: $out"
else
  BUILDAH=($SUDO buildah --root "$CACHE/storage" --runroot "$CACHE/run")
  base_image() { # key: the base tarball as a buildah image (imported once per storage)
    local name="localhost/kexec-base:$1" ctr
    if ! "${BUILDAH[@]}" inspect --type image "$name" >/dev/null 2>&1; then
      log "importing base $1 into buildah"
      ctr=$("${BUILDAH[@]}" from scratch)
      "${BUILDAH[@]}" add "$ctr" "$CACHE/base-$1.tar" / >&2
      "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/sh "$ctr" >&2
      "${BUILDAH[@]}" commit --rm --quiet "$ctr" "$name" >&2
    fi
    echo "$name"
  }
  runtime_image=$(base_image "$runtime_key")
  build_image=$(base_image "$build_key")
  image="localhost/kexec:$src_key"
  # pip in the build stage trusts what the host trusts (e.g. a TLS-intercepting egress
  # proxy's CA): the host's bundle is bind-mounted for the RUN steps, not copied into a layer.
  ca=()
  host_ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
  if [[ -f $host_ca ]]; then ca=(--volume "$host_ca:/etc/ssl/certs/ca-certificates.crt:ro"); fi
  log "buildah bud deploy/Dockerfile (PYTHON_IMAGE=$runtime_image BUILD_IMAGE=$build_image)"
  "${BUILDAH[@]}" bud --isolation chroot --pull=never --layers "${ca[@]}" \
    --build-arg "PYTHON_IMAGE=$runtime_image" --build-arg "BUILD_IMAGE=$build_image" \
    -f deploy/Dockerfile -t "$image" . >&2
  ctr=""
  cleanup() {
    if [[ -n $ctr ]]; then "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; fi
    $SUDO rm -rf "$out.tmp"
  }
  trap cleanup EXIT
  $SUDO rm -rf "$out.tmp" && mkdir -p "$out.tmp/rootfs"
  "${BUILDAH[@]}" push --quiet "$image" "oci-archive:$out.tmp/kexec.oci.tar:kexec:0.1.0" >&2
  ctr=$("${BUILDAH[@]}" from --pull=never "$image")
  mnt=$("${BUILDAH[@]}" mount "$ctr")
  tar -C "$mnt" -cf - . | tar -C "$out.tmp/rootfs" -xf -
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
  ctr=""
  # The image's run configuration (Env, Entrypoint, Cmd, User, WorkingDir) next to the root
  # filesystem: what a runtime needs to start a container of it (devstack/image_runner.py).
  "${BUILDAH[@]}" inspect --type image "$image" |
    python3 -c 'import json, sys; json.dump(json.load(sys.stdin)["OCIv1"]["config"], sys.stdout)' \
      >"$out.tmp/config.json"
  du -sb "$out.tmp/rootfs" | cut -f1 >"$out.tmp/rootfs.bytes"
  touch "$out.tmp/done"
  $SUDO rm -rf "$out" && mv "$out.tmp" "$out"
  trap - EXIT
  log "built $image: $(($(cat "$out/rootfs.bytes") / 1000000)) MB uncompressed"
  # Keep the newest $KEEP builds and any made in the last hour (a test elsewhere may be
  # running one); drop the rest and their tags (the layers stay cached).
  for old in $(ls -1td "$CACHE"/kexec-*[0-9a-f] 2>/dev/null | tail -n +"$((KEEP + 1))"); do
    if [[ -n $(find "$old" -maxdepth 0 -mmin +60) ]]; then
      "${BUILDAH[@]}" rmi "localhost/kexec:${old##*/kexec-}" >/dev/null 2>&1 || true
      $SUDO rm -rf "$old"
    fi
  done
fi
# Leftovers of interrupted builds (we hold the lock) and bases no longer used.
$SUDO rm -rf "$CACHE"/kexec-*.tmp
for tar in "$CACHE"/base-*.tar; do
  case $tar in *"$runtime_key"*|*"$build_key"*) ;; *) $SUDO rm -rf "$tar" ;; esac
done
echo "$out/kexec.oci.tar"
echo "$out/rootfs"
