#!/usr/bin/env bash
# A complete regkeeper demo on one machine, without internet: starts two local
# registries, seeds the first with generated images (three repositories, shared
# layers, one two-platform index), mirrors them with `regkeeper sync`, then
# checks every target tag with skopeo and runs the sync again (a no-op).
#
#   examples/demo.sh     # installs docker-registry, skopeo, curl, python3 with apt-get when missing
#   examples/demo.sh /usr/bin/regkeeper   # or REGKEEPER_BIN=...: use that binary, build nothing
set -euo pipefail
# A binary given by path is taken relative to where the demo was started.
given=${1:-${REGKEEPER_BIN:-}}
case $given in */*) given=$(realpath "$given") ;; esac
cd "$(dirname "$0")/.."
# Debian package per command the demo runs.
need=()
for pair in docker-registry:docker-registry skopeo:skopeo curl:curl python3:python3; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/bin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "demo: installing ${need[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

work=$(mktemp -d /tmp/regkeeper-demo.XXXXXX)
# Registries are started inside $(...) subshells, so their PIDs go to files.
cleanup() {
    for f in "$work"/*/pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    sleep 0.2; rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_registry() { # name -> prints port
    local name=$1 port; port=$(free_port)
    mkdir -p "$work/$name/data"
    cat >"$work/$name/config.yml" <<YML
version: 0.1
log: {level: warn, accesslog: {disabled: false}}
storage:
  filesystem: {rootdirectory: $work/$name/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port, secret: demo-secret-$name}
YML
    docker-registry serve "$work/$name/config.yml" >"$work/$name/registry.log" 2>&1 &
    echo $! >"$work/$name/pid"
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "$port"
}

SRC=$(start_registry src); DST=$(start_registry dst)
echo "source registry 127.0.0.1:$SRC, target registry 127.0.0.1:$DST"

# Generate an OCI layout with deterministic images, then push it with skopeo.
python3 - "$work/layout" <<'PY'
import hashlib, json, os, random, sys
root = sys.argv[1]; os.makedirs(f"{root}/blobs/sha256", exist_ok=True)
def blob(data, mt):
    d = hashlib.sha256(data).hexdigest()
    open(f"{root}/blobs/sha256/{d}", "wb").write(data)
    return {"mediaType": mt, "digest": f"sha256:{d}", "size": len(data)}
def layer(seed, size):
    return blob(random.Random(seed).randbytes(size), "application/vnd.oci.image.layer.v1.tar")
def image(arch, layers):
    cfg = blob(json.dumps({"architecture": arch, "os": "linux", "created": "2026-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}).encode(),
        "application/vnd.oci.image.config.v1+json")
    return blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg, "layers": layers}).encode(), "application/vnd.oci.image.manifest.v1+json")
base = layer("base", 3 << 20)
refs = []
for r in range(3):
    shared = layer(f"repo{r}", 1 << 20)
    for t in range(1, 4):
        m = image("amd64", [base, shared, layer(f"{r}-{t}", 256 << 10)])
        refs.append((f"demo.app{r}--v{t}", m))
amd = image("amd64", [base, layer("multi-amd", 512 << 10)])
arm = image("arm64", [base, layer("multi-arm", 512 << 10)])
arm["platform"] = {"architecture": "arm64", "os": "linux"}; amd["platform"] = {"architecture": "amd64", "os": "linux"}
idx = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [amd, arm]}).encode(), "application/vnd.oci.image.index.v1+json")
refs.append(("demo.app0--multi", idx))
for name, d in refs:
    d.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = name
open(f"{root}/index.json", "w").write(json.dumps({"schemaVersion": 2, "manifests": [d for _, d in refs]}))
open(f"{root}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
print("\n".join(n for n, _ in refs), file=open(f"{root}/refs", "w"))
PY
while read -r ref; do
    repo=${ref%%--*}; repo=${repo/./\/}; tag=${ref##*--}
    skopeo copy -q --all --preserve-digests --dest-tls-verify=false "oci:$work/layout:$ref" "docker://127.0.0.1:$SRC/$repo:$tag"
done <"$work/layout/refs"
echo "seeded $(wc -l <"$work/layout/refs") tags into 127.0.0.1:$SRC/demo/*"

cat >"$work/config.toml" <<TOML
version = 1
[daemon]
state_dir = "$work/state"
listen = ""
[registries."127.0.0.1:$SRC"]
plain_http = true
[registries."127.0.0.1:$DST"]
plain_http = true
[[rule]]
name = "demo"
source = "127.0.0.1:$SRC/demo/*"
targets = ["127.0.0.1:$DST/mirror/*", "oci:$work/dr/*"]
TOML

# An installed or prebuilt binary when given (argument or REGKEEPER_BIN),
# else one built from this checkout.
bin=$given
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=target/release/regkeeper
fi
[ -x "$bin" ] || command -v "$bin" >/dev/null 2>&1 || { echo "demo: $bin is not an executable" >&2; exit 2; }
echo; echo "== regkeeper plan"; $bin plan -c "$work/config.toml"
echo; echo "== regkeeper sync"; $bin sync -c "$work/config.toml"
echo; echo "== checking every target tag with skopeo"
while read -r ref; do
    repo=${ref%%--*}; repo=${repo/./\/}; tag=${ref##*--}; rel=${repo#demo/}
    want=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$SRC/$repo:$tag" | sha256sum | cut -d' ' -f1)
    got=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$DST/mirror/$rel:$tag" | sha256sum | cut -d' ' -f1)
    gotoci=$(skopeo inspect --raw "oci:$work/dr/$rel:$tag" | sha256sum | cut -d' ' -f1)
    [ "$want" = "$got" ] && [ "$want" = "$gotoci" ] || { echo "MISMATCH $repo:$tag"; exit 1; }
    echo "  $repo:$tag  sha256:${want:0:12}  registry ok, oci ok"
done <"$work/layout/refs"
echo; echo "== regkeeper sync again (nothing to do)"; $bin sync -c "$work/config.toml"
echo; echo "demo ok"
