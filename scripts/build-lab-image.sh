#!/usr/bin/env bash
# build-lab-image.sh - build a JupyterLab root filesystem for `docker import`,
# without any container registry (only the machine's Debian apt mirror and PyPI).
#
# Usage (as root, on Debian 12 / amd64):
#   bash scripts/build-lab-image.sh --hub-version X.Y.Z --out /path/to/lab-image.tar.gz [--cache-dir DIR]
#
#   --hub-version X.Y.Z  exact JupyterHub version of the hub (e.g. `jupyterhub --version`); the image
#                        gets jupyterhub==X.Y.Z so its `jupyterhub-singleuser` matches the hub.
#   --out FILE           where to write the gzip'd rootfs tarball (FILE.stamp is written next to it).
#   --cache-dir DIR      cache for the debootstrap base tarball and the wheels
#                        (default: /var/cache/rootless-gpu-spawner).
#
# The result is a gzip'd tar of a Debian bookworm (minbase) root filesystem with python3,
# ca-certificates and a venv at /opt/venv holding jupyterhub==X.Y.Z and jupyterlab.
# Import it into a (rootless) docker daemon with exactly these changes:
#
#   docker import \
#     -c 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
#     -c 'CMD ["jupyterhub-singleuser"]' \
#     -c 'WORKDIR /root' \
#     OUT NAME:TAG
#
# The container runs as root (inside a rootless daemon that is the student's own uid), so
# jupyterhub-singleuser / jupyter lab need --allow-root.
#
# Steps:
#   1. debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm ROOTFS MIRROR
#      MIRROR is read at run time from this machine's apt sources (first non-security Debian entry);
#      override with RGS_APT_MIRROR=URL. The result is cached as a tarball in the cache dir.
#   2. host `python3 -m pip download --only-binary=:all: --python-version 3.11.2 --platform ... -d WHEELS
#      jupyterhub==X.Y.Z jupyterlab` (cached per hub version).
#   3. chroot ROOTFS python3 -m venv /opt/venv
#      chroot ROOTFS /opt/venv/bin/pip install --no-index --find-links /wheels jupyterhub==X.Y.Z jupyterlab
#   4. strip apt lists, caches, docs, man pages; tar + gzip to OUT (atomically), write OUT.stamp.
#
# If OUT exists and OUT.stamp says it was built for the same hub version (and its sha256 matches),
# nothing is rebuilt. Every long step runs under `timeout`. Progress goes to stderr.

set -euo pipefail

PROG=build-lab-image
# Bump when the image content produced by this script changes (invalidates OUT.stamp reuse).
RECIPE_VERSION=1
SUITE=bookworm
VARIANT=minbase
INCLUDE_PKGS=python3,python3-venv,ca-certificates
TARGET_PY=3.11.2
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 any)

# Upper bounds (seconds) for each step.
T_APT=900
T_DEBOOTSTRAP=1800
T_PIP_DOWNLOAD=1800
T_CHROOT=1800
T_TAR=1800
T_LOCK=3600

log() { printf '[%s %s] %s\n' "$PROG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

HUB_VERSION=""
OUT=""
CACHE_DIR=/var/cache/rootless-gpu-spawner

while [ $# -gt 0 ]; do
    case "$1" in
        --hub-version) [ $# -ge 2 ] || die "--hub-version needs a value"; HUB_VERSION=$2; shift 2 ;;
        --hub-version=*) HUB_VERSION=${1#*=}; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --cache-dir) [ $# -ge 2 ] || die "--cache-dir needs a value"; CACHE_DIR=$2; shift 2 ;;
        --cache-dir=*) CACHE_DIR=${1#*=}; shift ;;
        -h|--help) usage 0 ;;
        *) printf '[%s] unknown argument: %s\n' "$PROG" "$1" >&2; usage 2 ;;
    esac
done

[ -n "$HUB_VERSION" ] || { printf '[%s] --hub-version is required\n' "$PROG" >&2; usage 2; }
[ -n "$OUT" ] || { printf '[%s] --out is required\n' "$PROG" >&2; usage 2; }
[[ "$HUB_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.a-z0-9]*)$ ]] \
    || die "--hub-version must look like X.Y.Z, got '$HUB_VERSION'"

case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
case "$CACHE_DIR" in /*) ;; *) CACHE_DIR="$PWD/$CACHE_DIR" ;; esac
STAMP="$OUT.stamp"

# ---------------------------------------------------------------------------------------------
# Reuse an existing output built for the same hub version.
# ---------------------------------------------------------------------------------------------
stamp_get() { # stamp_get KEY FILE
    sed -n "s/^$1=//p" "$2" 2>/dev/null | head -n 1
}

try_reuse() {
    [ -f "$OUT" ] && [ -f "$STAMP" ] || return 1
    [ "$(stamp_get hub_version "$STAMP")" = "$HUB_VERSION" ] || return 1
    [ "$(stamp_get recipe "$STAMP")" = "$RECIPE_VERSION" ] || return 1
    local want have
    want=$(stamp_get sha256 "$STAMP")
    [ -n "$want" ] || return 1
    have=$(sha256sum "$OUT" | cut -d' ' -f1)
    [ "$want" = "$have" ] || { log "$OUT does not match its stamp (sha256); rebuilding"; return 1; }
    log "reusing $OUT (built for jupyterhub $HUB_VERSION, jupyterlab $(stamp_get jupyterlab_version "$STAMP"), sha256 $have)"
    echo "reused $OUT (jupyterhub $HUB_VERSION)"
    return 0
}

if try_reuse; then exit 0; fi

# ---------------------------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and chroot need it)"
command -v dpkg >/dev/null 2>&1 || die "this script needs a Debian host (dpkg not found)"
ARCH=$(dpkg --print-architecture)
[ "$ARCH" = amd64 ] || die "only amd64 hosts are supported (wheels are x86_64), this is $ARCH"
for tool in timeout flock tar gzip sha256sum chroot mount umount findmnt; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found"
done

mkdir -p "$CACHE_DIR" "$(dirname "$OUT")"
exec 9>"$CACHE_DIR/.build-lab-image.lock"
log "waiting for the build lock $CACHE_DIR/.build-lab-image.lock (at most ${T_LOCK}s)"
flock -w "$T_LOCK" 9 || die "could not take the build lock within ${T_LOCK}s"
# Another build may have produced it while we waited.
if try_reuse; then exit 0; fi

APT_UPDATED=0
apt_install() { # apt_install PKG...
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        timeout "$T_APT" apt-get update -q >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    timeout "$T_APT" apt-get install -y -q --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
}

if ! command -v debootstrap >/dev/null 2>&1; then
    apt_install debootstrap
fi
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || apt_install debian-archive-keyring

HOST_PY=python3
command -v "$HOST_PY" >/dev/null 2>&1 || apt_install python3
if ! "$HOST_PY" -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
fi

# ---------------------------------------------------------------------------------------------
# Find the Debian mirror in this machine's apt sources (never hard-coded).
# ---------------------------------------------------------------------------------------------
# deb822 *.sources: first stanza with Types: deb, suite bookworm, component main, not -security.
mirror_from_deb822() { # FILE...
    awk -v suite="$SUITE" '
        function flush() {
            if (!done && uris != "" && enabled != "no" && types ~ /(^|[ \t])deb([ \t]|$)/ \
                && (" " suites " ") ~ (" " suite " ") && (" " comps " ") ~ / main / \
                && suites !~ /-security/ && uris !~ /security/) {
                split(uris, u, /[ \t]+/); print u[1]; done = 1
            }
            uris = ""; suites = ""; types = ""; comps = ""; enabled = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        {
            line = $0; key = tolower(line); sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val)
            if (key == "uris") uris = val
            else if (key == "suites") suites = val
            else if (key == "types") types = val
            else if (key == "components") comps = val
            else if (key == "enabled") enabled = tolower(val)
        }
        END { flush() }
    ' "$@" | head -n 1
}

# one-line style: "deb [opts] URI SUITE COMPONENTS..."
mirror_from_list() { # FILE...
    awk -v suite="$SUITE" '
        /^[ \t]*deb[ \t]/ {
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            uri = $i; s = $(i + 1); comps = ""
            for (j = i + 2; j <= NF; j++) comps = comps " " $j
            if (s == suite && (comps " ") ~ / main / && uri !~ /security/) { print uri; exit }
        }
    ' "$@" | head -n 1
}

find_mirror() {
    local m="" f
    if [ -n "${RGS_APT_MIRROR:-}" ]; then echo "$RGS_APT_MIRROR"; return 0; fi
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        m=$(mirror_from_deb822 "$f")
        [ -n "$m" ] && { echo "$m"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        m=$(mirror_from_list "$f")
        [ -n "$m" ] && { echo "$m"; return 0; }
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# Work dir and cleanup (unmount before deleting, never delete through a live mount).
# ---------------------------------------------------------------------------------------------
WORK=$(mktemp -d "$CACHE_DIR/build.XXXXXX")
ROOTFS="$WORK/rootfs"
OUT_TMP=""

mounts_under() { # list mount points at or below $1, deepest first
    findmnt -rn -o TARGET | awk -v p="$1" '$0 == p || index($0, p "/") == 1' | sort -r
}

cleanup() {
    local rc=$? m left=0
    set +e
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        for m in $(mounts_under "$WORK"); do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || { log "could not unmount $m"; left=1; }
        done
        if [ "$left" -eq 0 ] && [ -z "$(mounts_under "$WORK")" ]; then
            rm -rf "$WORK"
        else
            log "leaving $WORK in place because something is still mounted below it"
        fi
    fi
    [ -n "$OUT_TMP" ] && rm -f "$OUT_TMP"
    [ "$rc" -eq 0 ] || log "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a command inside the rootfs with a clean environment (no host PYTHON*/pyenv variables).
in_chroot() {
    timeout "$T_CHROOT" env -i \
        PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        chroot "$ROOTFS" "$@"
}

SECONDS_START=$SECONDS
step_t0=0
step_begin() { step_t0=$SECONDS; log "$*"; }
step_end() { log "$* (took $((SECONDS - step_t0))s)"; }

# ---------------------------------------------------------------------------------------------
# 1. Base rootfs (debootstrap), cached as a tarball.
# ---------------------------------------------------------------------------------------------
BASE_TAR="$CACHE_DIR/debootstrap-$SUITE-$VARIANT-$ARCH-$(printf '%s' "$INCLUDE_PKGS" | sha256sum | cut -c1-12).tar.gz"
mkdir -p "$ROOTFS"

if [ -s "$BASE_TAR" ] && gzip -t "$BASE_TAR" 2>/dev/null; then
    step_begin "unpacking cached base rootfs $BASE_TAR"
    timeout "$T_TAR" tar --numeric-owner -xzpf "$BASE_TAR" -C "$ROOTFS" || die "unpacking $BASE_TAR failed"
    step_end "base rootfs unpacked"
else
    MIRROR=$(find_mirror) || die "no non-security Debian '$SUITE' mirror found in /etc/apt/sources.list{,.d/*} (set RGS_APT_MIRROR=URL)"
    step_begin "debootstrap --variant=$VARIANT --include=$INCLUDE_PKGS $SUITE $ROOTFS $MIRROR"
    if ! timeout "$T_DEBOOTSTRAP" debootstrap --variant="$VARIANT" --include="$INCLUDE_PKGS" \
            "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2 || true
        [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    step_end "debootstrap done"
    # Trim what is never needed, then cache the base.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/debootstrap
    step_begin "caching base rootfs as $BASE_TAR"
    timeout "$T_TAR" tar --numeric-owner -C "$ROOTFS" -czf "$BASE_TAR.tmp.$$" . || { rm -f "$BASE_TAR.tmp.$$"; die "caching base rootfs failed"; }
    mv -f "$BASE_TAR.tmp.$$" "$BASE_TAR"
    step_end "base rootfs cached ($(du -h "$BASE_TAR" | cut -f1))"
fi
[ -x "$ROOTFS/usr/bin/python3" ] || die "base rootfs has no /usr/bin/python3"
ROOTFS_PY=$(in_chroot python3 -c 'import platform; print(platform.python_version())') || die "python3 does not run in the rootfs"
log "rootfs python3 is $ROOTFS_PY"
case "$ROOTFS_PY" in 3.11.*) ;; *) die "rootfs python3 is $ROOTFS_PY, wheels are fetched for $TARGET_PY" ;; esac

# ---------------------------------------------------------------------------------------------
# 2. Wheels (host pip), cached per hub version.
# ---------------------------------------------------------------------------------------------
WHEELS="$CACHE_DIR/wheels/jupyterhub-$HUB_VERSION"
if [ -f "$WHEELS/.complete" ]; then
    log "using cached wheels in $WHEELS ($(ls "$WHEELS" | grep -c '\.whl$') wheels)"
else
    rm -rf "$WHEELS.partial"
    mkdir -p "$WHEELS.partial"
    plat_args=()
    for p in "${PLATFORMS[@]}"; do plat_args+=(--platform "$p"); done
    step_begin "pip download jupyterhub==$HUB_VERSION jupyterlab (python $TARGET_PY, ${PLATFORMS[*]})"
    if ! timeout "$T_PIP_DOWNLOAD" env PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
            "$HOST_PY" -m pip download -q --only-binary=:all: --python-version "$TARGET_PY" \
            "${plat_args[@]}" -d "$WHEELS.partial" "jupyterhub==$HUB_VERSION" jupyterlab \
            >"$WORK/pip-download.log" 2>&1; then
        # Hide pip's noise about absent find-links/extra-index locations from the host's pip config.
        grep -v "^WARNING: Location '.*' is ignored" "$WORK/pip-download.log" | tail -n 40 >&2 || true
        rm -rf "$WHEELS.partial"
        die "pip download failed"
    fi
    touch "$WHEELS.partial/.complete"
    rm -rf "$WHEELS"
    mv "$WHEELS.partial" "$WHEELS"
    step_end "pip download done ($(ls "$WHEELS" | grep -c '\.whl$') wheels, $(du -sh "$WHEELS" | cut -f1))"
fi

# ---------------------------------------------------------------------------------------------
# 3. venv + offline install inside the rootfs.
# ---------------------------------------------------------------------------------------------
step_begin "creating /opt/venv in the rootfs"
in_chroot python3 -m venv /opt/venv || die "python3 -m venv /opt/venv failed in the rootfs"
step_end "venv created"

# Copy (not bind-mount) the wheels in: nothing to unmount, and the copy is removed below.
mkdir -p "$ROOTFS/wheels"
cp -a "$WHEELS"/*.whl "$ROOTFS/wheels/" || die "copying wheels into the rootfs failed"

step_begin "pip install --no-index jupyterhub==$HUB_VERSION jupyterlab in the rootfs"
if ! in_chroot /opt/venv/bin/pip install -q --no-index --find-links /wheels \
        "jupyterhub==$HUB_VERSION" jupyterlab >"$WORK/pip-install.log" 2>&1; then
    tail -n 40 "$WORK/pip-install.log" >&2 || true
    die "offline pip install in the rootfs failed"
fi
step_end "pip install done"
rm -rf "$ROOTFS/wheels"

# Sanity checks inside the rootfs.
GOT_HUB=$(in_chroot /opt/venv/bin/python -c 'import jupyterhub; print(jupyterhub.__version__)') \
    || die "jupyterhub does not import in the rootfs"
[ "$GOT_HUB" = "$HUB_VERSION" ] || die "rootfs has jupyterhub $GOT_HUB, wanted $HUB_VERSION"
GOT_LAB=$(in_chroot /opt/venv/bin/python -c 'import jupyterlab; print(jupyterlab.__version__)') \
    || die "jupyterlab does not import in the rootfs"
in_chroot /opt/venv/bin/jupyterhub-singleuser --version >/dev/null 2>&1 \
    || die "jupyterhub-singleuser --version fails in the rootfs"
[ -x "$ROOTFS/opt/venv/bin/jupyter-lab" ] || die "jupyter-lab missing in /opt/venv/bin"
[ -s "$ROOTFS/etc/ssl/certs/ca-certificates.crt" ] || die "ca-certificates bundle missing in the rootfs"
log "rootfs has jupyterhub $GOT_HUB, jupyterlab $GOT_LAB"

# ---------------------------------------------------------------------------------------------
# 4. Slim down, pack, stamp.
# ---------------------------------------------------------------------------------------------
log "removing apt lists, caches, docs and man pages"
rm -rf "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
       "$ROOTFS"/var/cache/ldconfig/aux-cache \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/usr/share/lintian "$ROOTFS"/usr/share/linda \
       "$ROOTFS"/opt/venv/share/man \
       "$ROOTFS"/root/.cache "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
       "$ROOTFS"/debootstrap
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
find "$ROOTFS/var/log" -type f -exec truncate -s 0 {} + 2>/dev/null || true
# Docker provides /dev, /proc, /sys, hostname and resolv.conf; do not ship the build host's.
find "$ROOTFS/dev" -mindepth 1 -delete 2>/dev/null || true
: >"$ROOTFS/etc/resolv.conf"
printf 'localhost\n' >"$ROOTFS/etc/hostname"

OUT_TMP="$OUT.tmp.$$"
step_begin "packing $OUT"
timeout "$T_TAR" bash -c 'set -o pipefail; tar --numeric-owner -C "$1" -cf - . | gzip -6 >"$2"' _ "$ROOTFS" "$OUT_TMP" \
    || die "packing the rootfs failed"
gzip -t "$OUT_TMP" || die "packed tarball is corrupt"
SHA=$(sha256sum "$OUT_TMP" | cut -d' ' -f1)
mv -f "$OUT_TMP" "$OUT"
OUT_TMP=""
{
    echo "hub_version=$HUB_VERSION"
    echo "jupyterlab_version=$GOT_LAB"
    echo "python_version=$ROOTFS_PY"
    echo "recipe=$RECIPE_VERSION"
    echo "sha256=$SHA"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$STAMP.tmp.$$"
mv -f "$STAMP.tmp.$$" "$STAMP"
step_end "packed $OUT ($(du -h "$OUT" | cut -f1), sha256 $SHA)"

log "done in $((SECONDS - SECONDS_START))s. Import with:"
log "  docker import -c 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD [\"jupyterhub-singleuser\"]' -c 'WORKDIR /root' $OUT NAME:TAG"
echo "built $OUT (jupyterhub $HUB_VERSION, jupyterlab $GOT_LAB)"
