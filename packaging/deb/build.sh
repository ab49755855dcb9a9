#!/bin/sh
# The Debian package of the gateway, from a staged tree with dpkg-deb (docs/deployment.md):
#   sh packaging/deb/build.sh PYTHON OUTDIR     (PYTHON: one with pip; `make deb` passes the venv's)
# The wheel and the pinned, hashed core dependencies (requirements.txt, all pure Python) go into
# /usr/lib/sensorcity/python; every time stamp is the last commit's, so a rebuild is identical.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${1:?usage: build.sh PYTHON OUTDIR}
out=${2:?usage: build.sh PYTHON OUTDIR}
log() { echo "deb: $*" >&2; }

version=$("$py" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")
head -n 1 "$here/changelog" | grep -q "($version)" ||
    { log "packaging/deb/changelog has no entry for $version: add one"; exit 2; }
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct)}
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# the wheel, from a copy of the checkout's files (nothing is written into the checkout)
(cd "$root" && git ls-files -co --exclude-standard) | while read -r f; do
    [ -f "$root/$f" ] && install -D -m 0644 "$root/$f" "$work/src/$f"
done
"$py" -m pip wheel -q --no-deps -w "$work/wheel" "$work/src" >&2

s="$work/stage"
lib="$s/usr/lib/sensorcity/python"
# pip's cache of its own, so a cbor2 wheel that pip built elsewhere with its C extension is never
# reused here (it would make the package architecture-dependent; the check below stands guard)
PIP_CACHE_DIR=${SENSORCITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sensorcity}/deb-pip \
CBOR2_BUILD_C_EXTENSION=0 "$py" -m pip install -q --no-compile --no-deps \
    --no-binary cbor2 --target "$lib" -r "$here/requirements.txt" >&2
rm -rf "$lib/bin"  # console scripts: the package's one command is /usr/bin/sensorcity
"$py" -m pip install -q --no-compile --no-deps --target "$lib" "$work"/wheel/sensorcity-*.whl >&2
rm -rf "$lib/bin"
# where pip found the wheel (a temporary path): not part of the package
find "$lib" -name direct_url.json -delete
sed -i '/direct_url\.json/d' "$lib"/*.dist-info/RECORD
find "$lib" -name __pycache__ -prune -exec rm -rf {} +
if find "$lib" -name '*.so' | grep -q .; then
    log "compiled code in the package: $(find "$lib" -name '*.so' | head -n 1)"; exit 1
fi

install -D -m 0755 "$here/sensorcity" "$s/usr/bin/sensorcity"
install -D -m 0644 "$root/gateway/systemd/sensorcity-gateway.service" \
    "$s/lib/systemd/system/sensorcity-gateway.service"
install -D -m 0644 "$root/gateway/udev/99-sensorcity.rules" "$s/lib/udev/rules.d/99-sensorcity.rules"
install -D -m 0644 "$here/gateway.toml" "$s/etc/sensorcity/gateway.toml"
doc="$s/usr/share/doc/sensorcity"
install -D -m 0644 "$here/copyright" "$doc/copyright"
gzip -9n < "$here/changelog" > "$doc/changelog.gz"
install -m 0644 "$root/docs/gateway.md" "$root/docs/durability.md" "$doc/"
install -d "$s/usr/share/man/man1"
gzip -9n < "$here/sensorcity.1" > "$s/usr/share/man/man1/sensorcity.1.gz"
install -D -m 0644 "$here/lintian-overrides" "$s/usr/share/lintian/overrides/sensorcity"

find "$s" -type d -exec chmod 0755 {} +
find "$s" -type f ! -path "$s/usr/bin/*" -exec chmod 0644 {} +
chmod 0755 "$lib/sensorcity/tools/sim/qemu_image/build.sh"
mkdir -p "$s/DEBIAN"
size=$(du -sk "$s" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" "$here/control" > "$s/DEBIAN/control"
install -m 0644 "$here/conffiles" "$s/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$s/DEBIAN/"
(cd "$s" && find . -type f ! -path './DEBIAN/*' | sed 's|^\./||' | LC_ALL=C sort |
    xargs md5sum > DEBIAN/md5sums)
chmod 0644 "$s/DEBIAN/md5sums"
find "$s" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb="$out/sensorcity_${version}_all.deb"
dpkg-deb --root-owner-group -Zxz --build "$s" "$deb" >/dev/null
log "built $deb"
echo "$deb"
