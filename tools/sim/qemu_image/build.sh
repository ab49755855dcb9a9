#!/bin/sh
# Build MicroPython's qemu port (mps2-an385) from Debian's micropython source package with our
# port changes, and print the path of firmware.elf. The result is cached outside the checkout,
# keyed by the source version and a hash of this recipe, so a second run only prints the path.
#
# Needs (Debian): dpkg-dev gcc-arm-none-eabi libnewlib-arm-none-eabi make gcc python3; root the
# first time on a machine without a deb-src entry for micropython (it adds trixie's).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${SENSORCITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sensorcity}/qemu
# The source release the patch is written against; trixie carries it.
upstream=1.25.0

log() { echo "build.sh: $*" >&2; }

source_version() {
    apt-cache showsrc micropython 2>/dev/null | awk '/^Version:/ {print $2}' | grep "^$upstream" | sort -V | tail -n 1
}

# One run at a time (apt's lists and the build); whoever waited finds the other's result.
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9

version=$(source_version)
if [ -z "$version" ]; then
    [ "$(id -u)" = 0 ] || { log "no deb-src for micropython $upstream; run as root once"; exit 2; }
    log "adding deb-src for trixie (micropython $upstream)"
    echo "deb-src http://deb.debian.org/debian trixie main" > /etc/apt/sources.list.d/trixie-src.list
    apt-get update -qq >&2
    version=$(source_version)
    [ -n "$version" ] || { log "apt has no micropython $upstream source"; exit 2; }
fi

recipe_hash=$(cd "$here" && cat build.sh micropython-qemu.patch manifest.py _boot.py overlay/* | sha256sum | cut -c1-12)
key="$version-$(arm-none-eabi-gcc -dumpversion)-$recipe_hash"
out="$cache_root/$key"
if [ -f "$out/firmware.elf" ]; then
    echo "$out/firmware.elf"
    exit 0
fi

work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log "fetching micropython $version source"
(cd "$work" && apt-get source -qq "micropython=$version" >/dev/null 2>"$work/apt.log") || {
    cat "$work/apt.log" >&2; exit 1; }
src=$(find "$work" -maxdepth 1 -type d -name 'micropython-*' | head -n 1)
port="$src/ports/qemu"
patch -s -p1 -d "$src" < "$here/micropython-qemu.patch"
cp "$here"/overlay/* "$port/"
mkdir -p "$port/sensorcity"
cp "$here/manifest.py" "$here/_boot.py" "$port/sensorcity/"

jobs=$(nproc 2>/dev/null || echo 2)
log "building mpy-cross and the qemu port (BOARD=MPS2_AN385), -j$jobs"
make -s -C "$src/mpy-cross" -j"$jobs" >"$work/build.log" 2>&1 &&
    make -C "$port" BOARD=MPS2_AN385 -j"$jobs" >>"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2; exit 1; }

mkdir -p "$work/out"
cp "$port/build-MPS2_AN385/firmware.elf" "$work/out/"
secs=$(( $(date +%s) - start ))
printf 'source micropython %s\nbuilt %s in %s s\n' "$version" "$(date -u +%FT%TZ)" "$secs" > "$work/out/build-info.txt"
rm -rf "$out"
mv "$work/out" "$out"
log "built in $secs s: $out/firmware.elf"
echo "$out/firmware.elf"
