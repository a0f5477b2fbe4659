#!/bin/sh
# Builds dist/swimlock_VERSION_ARCH.deb from a staged tree with dpkg-deb:
# the binary, the systemd unit, a sample /etc/swimlock/agent.toml, a
# `swimlock` system user and /var/lib/swimlock made at install. No key is
# installed: the unit refuses to start until the operator makes one.
#   contrib/deb/build-deb.sh [BINARY] [OUTDIR]   (default target/release/swimlock, dist/)
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release/swimlock}
out=${2:-$root/dist}
[ -x "$bin" ] || { echo "build-deb: $bin not found: run cargo build --release first" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/swimlock" \
    "$stage/usr/share/doc/swimlock/contrib"
install -m 755 "$bin" "$stage/usr/bin/swimlock"
strip --strip-unneeded "$stage/usr/bin/swimlock" 2>/dev/null || true
install -m 644 "$root/contrib/systemd/swimlock.service" "$stage/lib/systemd/system/swimlock.service"
install -m 640 "$root/contrib/swimlock/agent.toml" "$stage/etc/swimlock/agent.toml"
install -m 644 "$root/README.md" "$stage/usr/share/doc/swimlock/README.md"
cp -r "$root/contrib/grafana" "$root/contrib/prometheus" "$stage/usr/share/doc/swimlock/contrib/"
chmod -R u=rwX,go=rX "$stage/usr/share/doc/swimlock/contrib"
size=$(du -sk "$stage" | cut -f1)

cat > "$stage/DEBIAN/control" <<CONTROL
Package: swimlock
Version: $version
Architecture: $arch
Maintainer: swimlock developers <swimlock@localhost>
Installed-Size: $size
Depends: libc6, adduser
Section: net
Priority: optional
Description: distributed lock node for bare-metal clusters
 Every host runs one swimlock agent; agents find each other with SWIM gossip
 over UDP and the oldest member grants locks with fencing tokens
 (JGroups CENTRAL_LOCK2). Ships a systemd unit (swimlock.service) that starts
 only once a cluster key is in /etc/swimlock/key (swimlock keygen).
CONTROL
echo "/etc/swimlock/agent.toml" > "$stage/DEBIAN/conffiles"
install -m 755 "$root/contrib/deb/postinst" "$stage/DEBIAN/postinst"
install -m 755 "$root/contrib/deb/postrm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/swimlock_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
