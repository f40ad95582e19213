# Shared by packaging/build, packaging/test and image/build: Debian chroots of a given
# architecture, made with mmdebstrap from this machine's own apt sources (no mirror is named
# in the project), cached under $CACHE_DIR and reused while their package list is unchanged.
# shellcheck shell=bash

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
CACHE_DIR=${KIOSK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiosk-voice}
SUITE=bookworm
DIST_DIR=${DIST_DIR:-$ROOT/dist}

say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# The deb822 sources of this machine's Debian mirror, given to mmdebstrap as its mirror.
host_sources() {
  local f
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -s "$f" ] && { echo "$f"; return; }
  done
  say "no Debian apt sources on this machine"; return 1
}

# binfmt_misc with qemu-user for foreign architectures (the kernel's, so root on the host).
enable_binfmt() {
  local arch=$1
  [ "$arch" = "$(dpkg --print-architecture)" ] && return 0
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  case "$arch" in arm64) update-binfmts --enable qemu-aarch64 2>/dev/null || true ;; esac
  arch-test "$arch" >/dev/null || { say "cannot run $arch binaries (qemu-user-static?)"; return 1; }
}

# make_chroot ARCH NAME PACKAGES...: a cached chroot directory, printed on stdout.
make_chroot() {
  local arch=$1 name=$2; shift 2
  local dir="$CACHE_DIR/chroots/$name-$arch"
  local stamp
  stamp=$(printf '%s\n' "$SUITE" "$@" | sha256sum | cut -c1-16)
  if [ ! -e "$dir/.kiosk-$stamp" ]; then
    enable_binfmt "$arch"
    say "making the $name chroot for $arch (once; cached in $dir)"
    rm -rf "$dir" && mkdir -p "$(dirname "$dir")"
    local sources; sources=$(host_sources)
    mmdebstrap --quiet --mode=root --variant=apt --architectures="$arch" \
      --include="$(IFS=,; echo "$*")" "$SUITE" "$dir" "$sources" >&2
    touch "$dir/.kiosk-$stamp"
  fi
  echo "$dir"
}

# in_chroot DIR CMD...: run CMD in DIR with /proc, /dev and the host's DNS and pip settings.
in_chroot() {
  local dir=$1; shift
  cp -L /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$dir/etc/pip.conf"
  local env=(HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)
  local v
  for v in $(compgen -e | grep -E '^(PIP_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy)$' | grep -v '^PIP_CERT$' || true); do
    env+=("$v=${!v}")
  done
  # The host's CA bundle: pip and apt may reach their registries through a proxy it trusts.
  if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    cp "$PIP_CERT" "$dir/etc/ssl/host-ca-bundle.crt"
    env+=(PIP_CERT=/etc/ssl/host-ca-bundle.crt)
  fi
  unshare --mount --fork -- bash -c '
    dir=$1; shift
    mount -t proc proc "$dir/proc"
    mount --rbind /dev "$dir/dev"
    mount -t tmpfs tmpfs "$dir/tmp"
    [ -d /opt/wheels ] && mkdir -p "$dir/opt/wheels" && mount --bind /opt/wheels "$dir/opt/wheels"
    exec chroot "$dir" /usr/bin/env -i "$@"' _ "$dir" "${env[@]}" "$@"
}
