#!/usr/bin/env bash
# Build the stack images from contracts/stack_recipe/recipe.env: a debootstrap of Debian bookworm,
# imported as the run image, plus compilers and headers imported as the build image.
# Usage: build.sh RUN_TAG BUILD_TAG   (runs as root; needs debootstrap and a Docker engine)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=recipe.env
. "$here/recipe.env"
run_tag=$1 build_tag=$2
work=$(mktemp -d /var/tmp/paas-stack.XXXXXX)
cleanup() {
  for m in proc sys dev/pts; do umount -l "$work/rootfs/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
root=$work/rootfs

echo "stack: debootstrap $SUITE (about a minute)"
debootstrap --variant=minbase --include="$RUN_PACKAGES" "$SUITE" "$root" "$MIRROR" \
  > "$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# The run user, its home and the app folder; nothing else writes there.
echo "vcap:x:$RUN_UID:$RUN_UID:vcap:/home/vcap:/bin/sh" >> "$root/etc/passwd"
echo "vcap:x:$RUN_UID:" >> "$root/etc/group"
echo "vcap:!:19000:0:99999:7:::" >> "$root/etc/shadow"
mkdir -p "$root/home/vcap" "$root/app" "$root/cache"
chown "$RUN_UID:$RUN_UID" "$root/home/vcap" "$root/app" "$root/cache"
# Slim the run image: no apt lists, docs or man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/info/*

importing() {  # $1 tag, $2 rootfs
  tar --numeric-owner -C "$2" -c . | docker import \
    -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'WORKDIR /app' -c "LABEL paas.kind=stack" -c 'CMD ["/bin/sh"]' - "$1" > /dev/null
}
echo "stack: importing $run_tag"
importing "$run_tag" "$root"

echo "stack: installing build packages"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
chroot "$root" apt-get update -qq > "$work/apt.log" 2>&1 \
  && DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
     $BUILD_PACKAGES >> "$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
chroot "$root" apt-get clean
umount -l "$root/proc"
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
: > "$root/etc/resolv.conf"
echo "stack: importing $build_tag"
importing "$build_tag" "$root"
echo "stack: done"
