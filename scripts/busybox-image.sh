#!/bin/sh
# Build a tiny busybox image with `docker import`, for examples and tests on machines without a registry.
# Usage: scripts/busybox-image.sh [IMAGE]   (default aima/busybox:local; needs the busybox-static package)
set -eu
image="${1:-aima/busybox:local}"
busybox="$(command -v busybox)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
echo "aima-busybox" > "$root/etc/hostname"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$image"
