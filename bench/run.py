#!/usr/bin/env python3
"""Benchmark: regkeeper against `skopeo sync` on the same two local registries.

One command (see bench/README.md):

    bench/run.py            # full corpus: 20 repos x 5 tags, ~800 MiB, plus a 1 GiB layer
    bench/run.py --quick    # small corpus, smoke test in about a minute

It starts two CNCF distribution registries on free 127.0.0.1 ports, builds a
deterministic corpus from --seed as an OCI layout, pushes it to the source with
`skopeo copy --all --preserve-digests`, then measures each tool in each scenario:

  full    copy everything into an empty target (target wiped and restarted, tool state wiped)
  noop    run again with nothing to do
  newtag  one new tag was pushed to the source (outside the timed region)
  big     one image with a single 1 GiB layer into an empty target
  curl    the physical limit: a monolithic upload (POST, then PUT ?digest=) of the same blob

Figures: wall, CPU (user+sys, from wait4 rusage), peak RSS, requests seen by each
registry by method (access log between marks), bytes served by the source and
received by the target (registry metrics), and a check that the target holds
exactly the expected content. Prints a table, PASS/MISS per target of issue 5,
and writes JSON to bench/results/latest.json. Python 3.11 standard library only.
"""
import argparse
import collections
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1 << 20
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
ACCEPT = ", ".join([MT_MANIFEST, MT_INDEX,
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])
ACCESS_RE = re.compile(r'^\S+ - \S+ \[[^\]]+\] "([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-)')
PREFIX, BIG_PREFIX = "bench", "big"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def canonical(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def free_port(taken, lo=5200, hi=5300):
    for p in range(lo, hi):
        if p in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        taken.add(p)
        return p
    sys.exit("no free port in 5200-5299")


# --------------------------------------------------------------------------- HTTP
class Http:
    """Keep-alive client for one registry (verification and small requests only)."""

    def __init__(self, addr):
        self.host, self.port = addr.split(":")[0], int(addr.split(":")[1])
        self.conn = None

    def req(self, method, path, headers=None, body=None):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise


# --------------------------------------------------------------------------- registries
class Registry:
    """One docker-registry process with filesystem storage, access log and metrics."""

    def __init__(self, name, work, ports, binary):
        self.name, self.binary = name, binary
        self.dir = os.path.join(work, name)
        self.data = os.path.join(self.dir, "data")
        self.logpath = os.path.join(self.dir, "registry.log")
        self.port, self.dport = free_port(ports), free_port(ports)
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = None
        os.makedirs(self.dir, exist_ok=True)
        self.cfg = os.path.join(self.dir, "config.yml")
        with open(self.cfg, "w") as f:
            f.write(f"""version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {self.data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
  cache:
    blobdescriptor: inmemory
http:
  addr: {self.addr}
  secret: regkeeper-bench-{name}-secret
  debug:
    addr: 127.0.0.1:{self.dport}
    prometheus:
      enabled: true
      path: /metrics
""")
        self.http = Http(self.addr)

    def start(self):
        logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen([self.binary, "serve", self.cfg], stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"registry {self.name} exited: see {self.logpath}")
            try:
                if self.http.req("GET", "/v2/")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit(f"registry {self.name} did not answer on {self.addr}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.http.conn = None

    def wipe_restart(self):
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
        self.start()

    def mark(self):
        """State to diff against: log offset, metric sums, process CPU."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        cpu = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
        return {"off": os.path.getsize(self.logpath), "metrics": self.metrics(), "cpu": cpu}

    def metrics(self):
        out = collections.Counter()
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.dport, timeout=10)
            c.request("GET", "/metrics")
            txt = c.getresponse().read().decode()
            c.close()
        except OSError:
            return out
        for line in txt.splitlines():
            for k in ("registry_http_request_size_bytes_sum", "registry_http_response_size_bytes_sum"):
                if line.startswith(k):
                    out[k] += float(line.rsplit(" ", 1)[1])
        return out

    def diff(self, before, after):
        with open(self.logpath, "rb") as f:
            f.seek(before["off"])
            chunk = f.read(after["off"] - before["off"]).decode(errors="replace")
        by_method, by_kind = collections.Counter(), collections.Counter()
        for line in chunk.splitlines():
            m = ACCESS_RE.match(line)
            if not m:
                continue
            meth, path, status, _ = m.groups()
            by_method[meth] += 1
            kind = ("manifest" if "/manifests/" in path else "upload" if "/blobs/uploads" in path else
                    "blob" if "/blobs/" in path else "tags" if "/tags/list" in path else
                    "catalog" if path.startswith("/v2/_catalog") else
                    "ping" if path.rstrip("/") == "/v2" else "other")
            by_kind[f"{meth} {kind} {status}"] += 1
        m = {k: after["metrics"][k] - before["metrics"].get(k, 0) for k in after["metrics"]}
        return {"requests": sum(by_method.values()), "by_method": dict(by_method),
                "by_kind": dict(sorted(by_kind.items())),
                "bytes_in": int(m.get("registry_http_request_size_bytes_sum", 0)),
                "bytes_out": int(m.get("registry_http_response_size_bytes_sum", 0)),
                "cpu_s": round(after["cpu"] - before["cpu"], 2)}


# --------------------------------------------------------------------------- corpus
class Corpus:
    """Deterministic synthetic images in an OCI layout; `images` is what a target must hold.

    Layers are pseudo-random bytes (the registry does not inspect them): a per-layer
    header from the key, then a seeded pool read from a key-dependent offset.
    """

    def __init__(self, root, seed):
        self.root, self.seed = root, seed
        self.blobdir = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.blobdir, exist_ok=True)
        with open(os.path.join(root, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.pool = b"".join(random.Random(seed).randbytes(MiB) for _ in range(16))
        self.layers, self.images, self.refs = {}, [], []

    def rng(self, key):
        return random.Random(hashlib.sha256(f"{self.seed}/{key}".encode()).digest())

    def path(self, digest):
        return os.path.join(self.blobdir, digest.split(":", 1)[1])

    def put(self, data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(self.path(d), "wb") as f:
            f.write(data)
        return {"digest": d, "size": len(data)}

    def layer(self, key, lo, hi):
        if key in self.layers:
            return self.layers[key]
        size = self.rng("size/" + key).randint(lo, hi)
        off = self.rng("off/" + key).randrange(len(self.pool))
        h, tmp, left = hashlib.sha256(), os.path.join(self.blobdir, ".tmp"), size
        with open(tmp, "wb") as f:
            head = hashlib.sha256(f"{self.seed}/layer/{key}".encode()).digest()[:min(32, size)]
            f.write(head), h.update(head)
            left -= len(head)
            while left > 0:
                piece = self.pool[off:off + min(left, 4 * MiB)]
                f.write(piece), h.update(piece)
                left -= len(piece)
                off = (off + len(piece)) % len(self.pool)
        d = "sha256:" + h.hexdigest()
        os.replace(tmp, self.path(d))
        self.layers[key] = {"digest": d, "size": size}
        return self.layers[key]

    def manifest(self, repo, tag, arch, layer_specs):
        layers = [self.layer(*s) for s in layer_specs]
        config = {"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
                  "config": {"Labels": {"bench.repo": repo, "bench.tag": tag}},
                  "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}}
        if arch == "arm64":
            config["variant"] = "v8"
        cfg = self.put(canonical(config))
        m = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": dict(cfg, mediaType=MT_CONFIG),
             "layers": [dict(l, mediaType=MT_LAYER) for l in layers]}
        desc = dict(self.put(canonical(m)), mediaType=MT_MANIFEST)
        return desc, [cfg] + layers

    def add(self, repo, tag, layer_specs_for, arches):
        """layer_specs_for(arch) -> [(key, lo, hi)]; more than one arch makes an OCI index."""
        children = [(a,) + self.manifest(repo, tag, a, layer_specs_for(a)) for a in arches]
        blobs = [b for _, _, bs in children for b in bs]
        if len(arches) == 1:
            desc, kids = children[0][1], []
        else:
            idx = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
                dict(d, platform=dict({"architecture": a, "os": "linux"}, **({"variant": "v8"} if a == "arm64" else {})))
                for a, d, _ in children]}
            desc, kids = dict(self.put(canonical(idx)), mediaType=MT_INDEX), [d for _, d, _ in children]
        img = {"repo": repo, "tag": tag, "ref": repo.replace("/", ".") + "--" + tag, "digest": desc["digest"],
               "children": [k["digest"] for k in kids], "blobs": blobs}
        self.refs.append(dict(desc, annotations={"org.opencontainers.image.ref.name": img["ref"]}))
        with open(os.path.join(self.root, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": self.refs}, f)
        self.images.append(img)
        return img

    def stats(self, images):
        uniq = {b["digest"]: b["size"] for i in images for b in i["blobs"]}
        return {"repos": len({i["repo"] for i in images}), "tags": len(images),
                "manifests": sum(1 + len(i["children"]) for i in images), "blobs": len(uniq),
                "bytes": sum(uniq.values()), "mib": round(sum(uniq.values()) / MiB, 1)}


def build_corpus(c, a):
    mb = lambda s: [int(float(x) * MiB) for x in s.split(":")]  # noqa: E731
    base, rep, uniq = mb(a.base_size), mb(a.repo_size), mb(a.uniq_size)

    def specs(ri, repo, tag):
        return lambda arch: [(f"base/{arch}/{ri % a.base_pool}", *base), (f"repo/{repo}/{arch}", *rep),
                             (f"uniq/{repo}/{tag}/{arch}", *uniq)]
    for ri in range(a.repos):
        repo = f"{PREFIX}/repo{ri + 1:02d}"
        for t in range(a.tags):
            multi = ri < a.multiarch and t == a.tags - 1
            c.add(repo, f"v{t + 1}", specs(ri, repo, f"v{t + 1}"), ["amd64", "arm64"] if multi else ["amd64"])
    return specs


# --------------------------------------------------------------------------- tools
class Skopeo:
    """skopeo with a private blob-info cache per run, so runs do not leak into each other."""

    def __init__(self, work):
        self.work = work

    def cmd(self, cache, args):
        os.makedirs(cache, exist_ok=True)
        if os.geteuid() == 0 and shutil.which("unshare"):
            # as root the cache path is fixed (/var/lib/containers/cache): bind-mount a private
            # dir over it in a private mount namespace (unshare execs, so the PID stays skopeo's)
            os.makedirs("/var/lib/containers/cache", exist_ok=True)
            return ["unshare", "-m", "sh", "-c",
                    'mount --bind "$0" /var/lib/containers/cache && exec skopeo "$@"', cache] + args, None
        return ["skopeo"] + args, dict(os.environ, XDG_DATA_HOME=cache)

    def push(self, layout, src, imgs, jobs=3):
        cache = os.path.join(self.work, "skopeo-cache", "push")
        by_repo = collections.defaultdict(list)
        for i in imgs:
            by_repo[i["repo"]].append(i)
        errors = []

        def worker(q):
            while q:
                for i in q.pop():
                    cmd, env = self.cmd(cache, ["copy", "--quiet", "--all", "--preserve-digests",
                                                "--dest-tls-verify=false", f"oci:{layout}:{i['ref']}",
                                                f"docker://{src}/{i['repo']}:{i['tag']}"])
                    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if r.returncode:
                        errors.append(f"{i['repo']}:{i['tag']}: {r.stderr.strip()[-300:]}")
        q = list(by_repo.values())
        ts = [threading.Thread(target=worker, args=(q,)) for _ in range(jobs)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        if errors:
            sys.exit("push to source failed:\n" + "\n".join(errors[:5]))


GNU_TIME = "/usr/bin/time"


def run_measured(cmd, env=None, timeout=3600):
    """Run cmd; wall time, CPU (user+sys) and peak RSS of the tool.

    Under GNU time -v when installed: a child forked by this (large) Python process would
    inherit its RSS high-water mark across exec, so wait4's ru_maxrss here would be at least
    Python's own. GNU time is small, so the rusage it reports is the tool's. Without it,
    os.wait4 is used and the RSS is a lower bound of max(tool, this script).
    """
    out = tempfile.TemporaryFile()
    tv = tempfile.NamedTemporaryFile("r", suffix=".time")
    use_time = os.access(GNU_TIME, os.X_OK)
    full = [GNU_TIME, "-v", "-o", tv.name] + cmd if use_time else cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(full, env=env, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    timer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    p.returncode = rc
    user, sys_, rss_kb = ru.ru_utime, ru.ru_stime, ru.ru_maxrss
    if use_time:
        txt = tv.read()
        g = lambda label: float(re.search(re.escape(label) + r":\s*([\d.]+)", txt).group(1))  # noqa: E731
        try:
            user, sys_, rss_kb = g("User time (seconds)"), g("System time (seconds)"), g("Maximum resident set size (kbytes)")
            m = re.search(r"Exit status:\s*(\d+)", txt)
            rc = int(m.group(1)) if m else rc
        except AttributeError:  # killed by a signal: GNU time wrote no report
            pass
    tv.close()
    out.seek(0)
    text = out.read().decode(errors="replace")
    return {"rc": rc, "wall_s": round(wall, 3), "cpu_s": round(user + sys_, 2), "user_s": round(user, 2),
            "sys_s": round(sys_, 2), "peak_rss_mb": round(rss_kb / 1024, 1), "rss_source": "gnu-time" if use_time
            else "wait4", "output_tail": text[-1500:]}


# --------------------------------------------------------------------------- verification
def verify(reg, images, prefix, blobs=True):
    """Target holds exactly `images` under prefix: repos, tags, digests, children, blobs."""
    h, problems = reg.http, []
    want = collections.defaultdict(dict)
    for i in images:
        want[i["repo"]][i["tag"]] = i
    repos, path = [], "/v2/_catalog?n=1000"
    while path:
        st, hd, body = h.req("GET", path)
        repos += (json.loads(body).get("repositories") or []) if st == 200 else []
        nxt = re.search(r"<([^>]+)>", hd.get("link", ""))
        path = urllib.parse.urljoin("/v2/_catalog", nxt.group(1)) if nxt else None
    got_repos = sorted(r for r in repos if r.startswith(prefix + "/"))
    if got_repos != sorted(want):
        problems.append(f"repositories {got_repos} != {sorted(want)}")
    seen = set()
    for repo, tags in sorted(want.items()):
        st, _, body = h.req("GET", f"/v2/{repo}/tags/list")
        got = sorted((json.loads(body).get("tags") or []) if st == 200 else [])
        if got != sorted(tags):
            problems.append(f"{repo}: tags {got} != {sorted(tags)}")
        for tag, img in tags.items():
            st, hd, _ = h.req("HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": ACCEPT})
            if st != 200 or hd.get("docker-content-digest") != img["digest"]:
                problems.append(f"{repo}:{tag}: {st} {hd.get('docker-content-digest')} != {img['digest']}")
            for d in img["children"]:
                if h.req("HEAD", f"/v2/{repo}/manifests/{d}", {"Accept": ACCEPT})[0] != 200:
                    problems.append(f"{repo}@{d}: child manifest missing")
            for b in img["blobs"] if blobs else []:
                if (repo, b["digest"]) in seen:
                    continue
                seen.add((repo, b["digest"]))
                st, hd, _ = h.req("HEAD", f"/v2/{repo}/blobs/{b['digest']}")
                if st != 200 or int(hd.get("content-length", -1)) != b["size"]:
                    problems.append(f"{repo}@{b['digest']}: blob {st}")
    return {"ok": not problems, "problems": len(problems), "first": problems[:5], "blobs_checked": len(seen)}


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small corpus and a 64 MiB big layer (smoke test)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repos", type=int)
    ap.add_argument("--tags", type=int)
    ap.add_argument("--multiarch", type=int, default=2, help="first N repos: last tag is a two-platform index")
    ap.add_argument("--base-pool", type=int, default=4, help="base layers shared across repositories")
    ap.add_argument("--base-size", help="MiB range lo:hi (default 10:20)")
    ap.add_argument("--repo-size", help="MiB range (default 5:15)")
    ap.add_argument("--uniq-size", help="MiB range (default 2:8)")
    ap.add_argument("--big-mib", type=int, help="size of the single big layer (default 1024)")
    ap.add_argument("--tools", default="skopeo,regkeeper")
    ap.add_argument("--scenarios", default="full,noop,newtag,big,curl")
    ap.add_argument("--regkeeper", default=os.path.join(ROOT, "target", "release", "regkeeper"),
                    help="binary (built with cargo build --release when it is the default and missing)")
    ap.add_argument("--work", help="work dir (default: a new dir under /tmp, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--registry-bin", default="/usr/bin/docker-registry")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per timed tool run")
    a = ap.parse_args()
    q = a.quick
    a.repos = a.repos or (6 if q else 20)
    a.tags = a.tags or (3 if q else 5)
    a.base_size = a.base_size or ("0.5:1" if q else "10:20")
    a.repo_size = a.repo_size or ("0.25:0.75" if q else "5:15")
    a.uniq_size = a.uniq_size or ("0.1:0.4" if q else "2:8")
    a.big_mib = a.big_mib or (64 if q else 1024)
    tools, scenarios = a.tools.split(","), a.scenarios.split(",")
    for t in ("skopeo", "curl", a.registry_bin):
        if not shutil.which(t):
            sys.exit(f"{t} not found (Debian: apt-get install skopeo curl docker-registry)")

    work = a.work or tempfile.mkdtemp(prefix="regkeeper-bench-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    ports, regs = set(), []

    def cleanup(*_):
        for r in regs:
            r.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        res = bench(a, tools, scenarios, work, ports, regs)
    finally:
        cleanup()
    return res


def bench(a, tools, scenarios, work, ports, regs):
    rk_error = None
    if "regkeeper" in tools and not os.access(a.regkeeper, os.X_OK):
        if a.regkeeper == os.path.join(ROOT, "target", "release", "regkeeper"):
            log("building regkeeper (cargo build --release) ...")
            r = subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, capture_output=True, text=True)
            if r.returncode:
                rk_error = "cargo build --release failed: " + r.stderr.strip()[-1500:]
        if not rk_error and not os.access(a.regkeeper, os.X_OK):
            rk_error = f"{a.regkeeper} is not executable"
        if rk_error:
            log(rk_error)

    src = Registry("src", work, ports, a.registry_bin)
    dst = Registry("dst", work, ports, a.registry_bin)
    regs += [src, dst]
    src.start(), dst.start()
    log(f"registries: source {src.addr}, target {dst.addr} (work dir {work})")

    t0 = time.time()
    layout = os.path.join(work, "corpus")
    corpus = Corpus(layout, a.seed)
    specs = build_corpus(corpus, a)
    base_images = list(corpus.images)
    big = corpus.add(f"{BIG_PREFIX}/layer", "v1", lambda arch: [(f"big/{arch}", a.big_mib * MiB, a.big_mib * MiB)],
                     ["amd64"]) if {"big", "curl"} & set(scenarios) else None
    stats = corpus.stats(base_images)
    log(f"corpus: {stats} generated in {time.time() - t0:.1f}s")
    sk = Skopeo(work)
    t0 = time.time()
    sk.push(layout, src.addr, corpus.images)
    v = verify(src, base_images, PREFIX)
    if not v["ok"]:
        sys.exit(f"source does not hold the corpus: {v}")
    log(f"pushed to source in {time.time() - t0:.1f}s")

    # the new tag for `newtag`: built now (deterministic), pushed before each tool's newtag run
    ri = min(6, a.repos - 1)
    new_repo, new_tag = f"{PREFIX}/repo{ri + 1:02d}", f"v{a.tags + 1}"
    newimg = corpus.add(new_repo, new_tag, specs(ri, new_repo, new_tag), ["amd64"])

    state_dir = os.path.join(work, "regkeeper-state")
    cfg = os.path.join(work, "regkeeper.toml")
    with open(cfg, "w") as f:
        f.write(f'''version = 1
[daemon]
state_dir = "{state_dir}"
listen = ""
max_concurrent_transfers = 8
[registries."{src.addr}"]
plain_http = true
[registries."{dst.addr}"]
plain_http = true
chunk_size = "0"
[[rule]]
name = "bench"
source = "{src.addr}/{PREFIX}/*"
targets = ["{dst.addr}/{PREFIX}/*"]
[[rule]]
name = "big"
source = "{src.addr}/{BIG_PREFIX}/*"
targets = ["{dst.addr}/{BIG_PREFIX}/*"]
''')

    def skopeo_cmd(prefix, repos, cold):
        cache = os.path.join(work, "skopeo-cache", "sync")
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        y = os.path.join(work, f"skopeo-{prefix}.yaml")
        with open(y, "w") as f:
            f.write(f"{src.addr}:\n  tls-verify: false\n  images:\n" + "".join(f"    {r}: []\n" for r in repos))
        return sk.cmd(cache, ["sync", "--all", "--preserve-digests", "--src", "yaml", "--dest", "docker",
                              "--dest-tls-verify=false", y, f"{dst.addr}/{prefix}"])

    def tool_cmd(tool, rule, cold):
        if tool == "skopeo":
            imgs = base_images if rule == "bench" else [big]
            return skopeo_cmd(PREFIX if rule == "bench" else BIG_PREFIX, sorted({i["repo"] for i in imgs}), cold)
        if cold:
            shutil.rmtree(state_dir, ignore_errors=True)
        return [a.regkeeper, "sync", "-c", cfg, rule], None

    results = []

    def measure(tool, scn, cmd, env, expect, prefix, pre=None):
        os.sync()
        time.sleep(0.5)
        b = src.mark(), dst.mark()
        if pre:
            pre()
        r = run_measured(cmd, env=env, timeout=a.timeout)
        time.sleep(0.3)  # access log flush
        e = src.mark(), dst.mark()
        row = {"tool": tool, "scenario": scn, **r, "source": src.diff(b[0], e[0]), "target": dst.diff(b[1], e[1])}
        row["verify"] = verify(dst, expect, prefix) if expect is not None else None
        if r["rc"]:
            lines = [x for x in r["output_tail"].splitlines() if x.strip() and not x.lstrip()[:1].isdigit()]
            log(f"  {tool} {scn}: exit {r['rc']}: " + " | ".join(lines[:3])[:300])
        results.append(row)
        log(f"  {tool:9} {scn:6} rc={r['rc']} wall={r['wall_s']}s cpu={r['cpu_s']}s rss={r['peak_rss_mb']}MB "
            f"req src={row['source']['requests']} dst={row['target']['requests']} "
            f"verify={'ok' if not row['verify'] or row['verify']['ok'] else str(row['verify']['first'][:2])[:150]}")
        return row

    for tool in tools:
        if tool == "regkeeper" and rk_error:
            results.append({"tool": tool, "scenario": "all", "rc": None, "error": rk_error})
            continue
        log(f"{tool}:")
        for scn in [s for s in scenarios if s in ("full", "noop", "newtag")]:
            if scn == "full":
                dst.wipe_restart()
                measure(tool, scn, *tool_cmd(tool, "bench", cold=True), base_images, PREFIX)
            elif scn == "noop":
                measure(tool, scn, *tool_cmd(tool, "bench", cold=False), base_images, PREFIX)
            else:
                sk.push(layout, src.addr, [newimg])
                try:
                    measure(tool, scn, *tool_cmd(tool, "bench", cold=False), base_images + [newimg], PREFIX)
                finally:  # back to the base corpus at the source (DELETE by digest removes the tag)
                    for reg in (src, dst):
                        reg.http.req("DELETE", f"/v2/{new_repo}/manifests/{newimg['digest']}")
        if "big" in scenarios:
            dst.wipe_restart()
            measure(tool, "big", *tool_cmd(tool, "big", cold=True), [big], BIG_PREFIX)

    if "curl" in scenarios:
        dst.wipe_restart()
        blob = big["blobs"][1]
        cmd = ["curl", "-sS", "-f", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
               "-T", corpus.path(blob["digest"]), "URL"]

        def post():  # inside the marks (counted), outside the timed PUT
            _, hd, _ = dst.http.req("POST", f"/v2/{BIG_PREFIX}/curl/blobs/uploads/")
            url = urllib.parse.urljoin(f"http://{dst.addr}/", hd["location"])
            cmd[-1] = url + ("&" if "?" in url else "?") + "digest=" + blob["digest"]
        row = measure("curl", "curl", cmd, None, None, BIG_PREFIX, pre=post)
        st, hd, _ = dst.http.req("HEAD", f"/v2/{BIG_PREFIX}/curl/blobs/{blob['digest']}")
        ok = st == 200 and int(hd.get("content-length", -1)) == blob["size"]
        row["verify"] = {"ok": ok, "problems": 0 if ok else 1, "first": [] if ok else [f"blob HEAD {st}"]}

    for row in results:
        if row.get("scenario") in ("big", "curl") and row.get("wall_s") and row["rc"] == 0:
            row["throughput_mib_s"] = round(a.big_mib / row["wall_s"], 1)
    targets = check_targets(results, stats["tags"])
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(a), "corpus": stats,
              "big_layer_mib": a.big_mib, "new_tag": f"{new_repo}:{new_tag}",
              "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
              "versions": versions(a), "results": results, "targets": targets}
    print_table(report)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    log(f"JSON: {a.out}")
    return 0


def versions(a):
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None
    return {"skopeo": first(["skopeo", "--version"]), "registry": first([a.registry_bin, "--version"]),
            "regkeeper": first(["git", "-C", ROOT, "describe", "--always", "--dirty"])}


def check_targets(results, tags):
    """Issue 5's targets. Request limits are stated for 100 tags; scaled per tag for other corpora."""
    get = {(r["tool"], r["scenario"]): r for r in results if r.get("wall_s") is not None}
    out = []

    def add(name, value, limit, ok):
        out.append({"target": name, "value": value, "limit": limit,
                    "result": "n/a" if ok is None else "PASS" if ok else "MISS"})

    def good(*rows):
        return all(r and r["rc"] == 0 and (r["verify"] is None or r["verify"]["ok"]) for r in rows)

    def ratio(scn, limit):
        rk, sk = get.get(("regkeeper", scn)), get.get(("skopeo", scn))
        if not (rk and sk):
            return add(f"{scn}: regkeeper wall <= {limit}x skopeo", None, limit, None)
        v = round(rk["wall_s"] / sk["wall_s"], 3)
        add(f"{scn}: regkeeper wall <= {limit}x skopeo", v, limit, good(rk, sk) and v <= limit)

    def reqs(scn, per100):
        rk = get.get(("regkeeper", scn))
        limit = round(per100 * tags / 100)
        if not rk:
            return add(f"{scn}: requests at both registries <= {limit}", None, limit, None)
        v = rk["source"]["requests"] + rk["target"]["requests"]
        add(f"{scn}: requests at both registries <= {limit}", v, limit, good(rk) and v <= limit)

    def rss(scn, limit):
        rk = get.get(("regkeeper", scn))
        add(f"{scn}: regkeeper peak RSS <= {limit} MB", rk and rk["peak_rss_mb"], limit,
            None if not rk else good(rk) and rk["peak_rss_mb"] <= limit)
    ratio("full", 0.5), reqs("full", 1500), rss("full", 32)
    ratio("noop", 0.1), reqs("noop", 200)
    ratio("newtag", 0.15)
    rk, cu = get.get(("regkeeper", "big")), get.get(("curl", "curl"))
    if rk and cu:
        v = round(cu["wall_s"] / rk["wall_s"], 3)
        add("big: regkeeper throughput >= 0.8x curl monolithic", v, 0.8, good(rk, cu) and v >= 0.8)
    else:
        add("big: regkeeper throughput >= 0.8x curl monolithic", None, 0.8, None)
    rss("big", 64)
    return out


ABBR = {"GET": "G", "HEAD": "H", "POST": "Po", "PATCH": "Pa", "PUT": "Pu", "DELETE": "D"}


def fmt_methods(m):
    return " ".join(f"{ABBR.get(k, k)}{m[k]}" for k in sorted(m, key=lambda k: list(ABBR).index(k)
                                                                 if k in ABBR else 9)) or "-"


def print_table(rep):
    c = rep["corpus"]
    print(f"\ncorpus: {c['repos']} repos, {c['tags']} tags, {c['manifests']} manifests, {c['blobs']} blobs, "
          f"{c['mib']} MiB; big layer {rep['big_layer_mib']} MiB; new tag {rep['new_tag']}")
    print("requests: G=GET H=HEAD Po=POST Pa=PATCH Pu=PUT D=DELETE; MiB out = served by source, MiB in = "
          "received by target")
    hdr = ("tool", "scenario", "rc", "wall s", "cpu s", "rss MB", "src requests", "dst requests", "total",
           "MiB out", "MiB in", "MiB/s", "target ok")
    rows = []
    for r in rep["results"]:
        if r.get("wall_s") is None:
            rows.append((r["tool"], r["scenario"], "ERR", r.get("error", "")[:60].replace("\n", " ")) + ("",) * 9)
            continue
        s, t = r["source"], r["target"]
        rows.append((r["tool"], r["scenario"], r["rc"], f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
                     f"{r['peak_rss_mb']:.0f}", fmt_methods(s["by_method"]), fmt_methods(t["by_method"]),
                     s["requests"] + t["requests"], f"{s['bytes_out'] / MiB:.0f}", f"{t['bytes_in'] / MiB:.0f}",
                     r.get("throughput_mib_s", ""), "yes" if r["verify"]["ok"] else f"NO ({r['verify']['problems']})"))
    rows = [tuple(str(x) for x in row) for row in rows]
    w = [max(len(str(h)), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    line = lambda row: "  ".join(str(x).ljust(w[i]) for i, x in enumerate(row))  # noqa: E731
    print(line(hdr))
    print("  ".join("-" * x for x in w))
    for row in rows:
        print(line(row))
    print("\nrequests by kind (source | target):")
    for r in rep["results"]:
        if r.get("wall_s") is not None:
            k = lambda d: ", ".join(f"{c} {kind}" for kind, c in d["by_kind"].items()) or "-"  # noqa: E731
            print(f"  {r['tool']:9} {r['scenario']:6}  {k(r['source'])} | {k(r['target'])}")
    print("\ntargets (issue 5):")
    for t in rep["targets"]:
        print(f"  {t['result']:4}  {t['target']:52} value={t['value']}")


if __name__ == "__main__":
    sys.exit(main())
