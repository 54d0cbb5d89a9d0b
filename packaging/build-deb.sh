#!/usr/bin/env bash
# Builds the Debian package from a release build:
#
#   cargo build --release --locked && packaging/build-deb.sh
#
# writes target/debian/regkeeper_<version>_<arch>.deb. Arguments (both
# optional): the binary to package [target/release/regkeeper] and the output
# directory [target/debian]. Needs dpkg-deb (package dpkg) and
# dpkg-shlibdeps (package dpkg-dev); no root and no fakeroot.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${1:-$repo/target/release/regkeeper}")"
out="$(realpath -m "${2:-$repo/target/debian}")"
[ -x "$bin" ] || { echo "error: no binary at $bin; run cargo build --release --locked first" >&2; exit 2; }

version="$("$bin" --version | awk '{print $2}')"
arch="$(dpkg --print-architecture)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"

# The files, with the modes dpkg installs them with.
install -D -m 0755 "$bin" "$root/usr/bin/regkeeper"
strip --strip-unneeded "$root/usr/bin/regkeeper" 2>/dev/null || true
install -D -m 0644 "$repo/systemd/regkeeper.service" "$root/lib/systemd/system/regkeeper.service"
# An example, never the admin's config.toml: the package does not own that file.
# The service's own (packaging/): what it writes goes to /var/lib/regkeeper.
install -D -m 0644 "$repo/packaging/config.example.toml" "$root/etc/regkeeper/config.example.toml"
"$bin" generate man "$work/man" >/dev/null
install -d "$root/usr/share/man/man1"
for page in "$work"/man/*.1; do
    gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
for shell in bash zsh fish; do "$bin" generate completions "$shell" "$work/completions" >/dev/null; done
install -D -m 0644 "$work/completions/regkeeper.bash" "$root/usr/share/bash-completion/completions/regkeeper"
install -D -m 0644 "$work/completions/_regkeeper" "$root/usr/share/zsh/vendor-completions/_regkeeper"
install -D -m 0644 "$work/completions/regkeeper.fish" "$root/usr/share/fish/vendor_completions.d/regkeeper.fish"
install -D -m 0644 "$repo/packaging/debian/copyright" "$root/usr/share/doc/regkeeper/copyright"
install -D -m 0644 "$repo/README.md" "$root/usr/share/doc/regkeeper/README.md"
cp -r "$repo/docs" "$root/usr/share/doc/regkeeper/docs"
chmod -R u=rwX,go=rX "$root/usr/share/doc/regkeeper/docs"

# Depends: the shared libraries the binary links, as dpkg-shlibdeps finds
# them (it wants a debian/control in the directory it runs from).
mkdir -p "$work/shlibs/debian"
printf 'Source: regkeeper\n\nPackage: regkeeper\nArchitecture: any\n' >"$work/shlibs/debian/control"
depends="$(cd "$work/shlibs" && dpkg-shlibdeps -O "$root/usr/bin/regkeeper" 2>"$work/shlibdeps.log" \
    | sed -n 's/^shlibs:Depends=//p')" || { cat "$work/shlibdeps.log" >&2; exit 1; }
[ -n "$depends" ] || { echo "error: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$repo/packaging/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/regkeeper/config.example.toml >"$root/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" -e "s/@SIZE@/$size/" \
    "$repo/packaging/debian/control" >"$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/regkeeper_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
