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
  rules   the corpus as one rule per repository into an empty target (issue 11 (a))
  scale   1,000 repos x 10 tags of tiny images, one `/*` rule, into an empty target (issue 11 (b));
          the corpus is written as a distribution storage tree before a third registry starts
  scalenoop  the scale corpus again with nothing to do
  curl    the physical limit: a monolithic upload (POST, then PUT ?digest=) of the same blob

Figures: wall, CPU (user+sys, from wait4 rusage), peak RSS, load average, requests seen
by each registry by method (access log between marks), bytes served by the source and
received by the target (registry metrics), blob bytes served by the source and mounts
(access log), and a check that the target holds exactly the expected content.
`--regkeeper-baseline PATH` measures a second binary as tool regkeeper-base in the same
run. Prints tables, PASS/MISS per target of issues 5 and 11, and writes JSON to
bench/results/latest.json. Python 3.11 standard library only.
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
import statistics
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
PREFIX, BIG_PREFIX, SCALE_PREFIX = "bench", "big", "scale"


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
        """Empty storage: renamed aside, not deleted, since deleting the scale corpus's ~100,000
        files took minutes of IO here; the trash goes with the work dir at the end."""
        self.stop()
        if os.path.exists(self.data):
            trash = os.path.join(self.dir, "trash")
            os.makedirs(trash, exist_ok=True)
            os.rename(self.data, os.path.join(trash, str(len(os.listdir(trash)))))
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
        by_method, by_kind, blobs = collections.Counter(), collections.Counter(), collections.Counter()
        for line in chunk.splitlines():
            m = ACCESS_RE.match(line)
            if not m:
                continue
            meth, path, status, size = m.groups()
            by_method[meth] += 1
            count_blob_traffic(blobs, meth, path, status, size)
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
                "cpu_s": round(after["cpu"] - before["cpu"], 2), **{k: blobs[k] for k in BLOB_COUNTS}}


BLOB_COUNTS = ("blob_gets", "blob_bytes_out", "mounts", "mount_misses")


def count_blob_traffic(c, meth, path, status, size):
    """Blob bytes served (the access log's size, so manifests and tag lists do not count) and mounts.

    A mount is a POST with `mount=`: 201 mounted, 202 a fresh upload session (the blob was not
    found in `from`), per registry-facts.md.
    """
    if meth == "GET" and "/blobs/sha256:" in path and status in ("200", "206"):
        c["blob_gets"] += 1
        c["blob_bytes_out"] += int(size) if size.isdigit() else 0
    elif meth == "POST" and "mount=" in path:
        c["mounts" if status == "201" else "mount_misses"] += 1


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
        return corpus_stats(images)


def corpus_stats(images):
    """What a target must hold; `bytes` (unique blob bytes) is the floor for bytes read at the source."""
    uniq = {b["digest"]: b["size"] for i in images for b in i["blobs"]}
    holders = collections.defaultdict(set)
    for i in images:
        for b in i["blobs"]:
            holders[b["digest"]].add(i["repo"])
    return {"repos": len({i["repo"] for i in images}), "tags": len(images),
            # placements of a blob in a repository beyond its first: what a tool can mount
            "cross_repo": sum(len(r) - 1 for r in holders.values()),
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


# --------------------------------------------------------------------------- scale corpus
class StorageTree:
    """Writes images straight into a (stopped) distribution registry's filesystem storage.

    Pushing 10,000 images over HTTP takes minutes on 2 cores; the registry reads this layout
    as its own: blob data by digest, and per repository the links that make a blob, a
    manifest revision and a tag visible there (a repository is a dir holding `_layers`,
    which is also what the catalog walks for).
    """

    def __init__(self, data):
        self.v2 = os.path.join(data, "docker", "registry", "v2")
        self.done = set()

    def blob(self, data):
        hexd = hashlib.sha256(data).hexdigest()
        if hexd not in self.done:
            d = os.path.join(self.v2, "blobs", "sha256", hexd[:2], hexd)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "data"), "wb") as f:
                f.write(data)
            self.done.add(hexd)
        return {"digest": "sha256:" + hexd, "size": len(data)}

    def link(self, repo, parts, digest):
        d = os.path.join(self.v2, "repositories", repo, *parts)
        if d in self.done:
            return
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "link"), "w") as f:
            f.write(digest)
        self.done.add(d)

    def image(self, repo, tag, config, layers):
        """One single-platform OCI image tagged repo:tag; returns what a target must hold."""
        cfg, ls = self.blob(canonical(config)), [self.blob(b) for b in layers]
        for b in [cfg] + ls:
            self.link(repo, ("_layers", "sha256", b["digest"][7:]), b["digest"])
        m = self.blob(canonical({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                                 "config": dict(cfg, mediaType=MT_CONFIG),
                                 "layers": [dict(b, mediaType=MT_LAYER) for b in ls]}))
        d, hexd = m["digest"], m["digest"][7:]
        self.link(repo, ("_manifests", "revisions", "sha256", hexd), d)
        self.link(repo, ("_manifests", "tags", tag, "current"), d)
        self.link(repo, ("_manifests", "tags", tag, "index", "sha256", hexd), d)
        return {"repo": repo, "tag": tag, "digest": d, "children": [], "blobs": [cfg] + ls}


def build_scale(data, a):
    """`--scale-repos` x `--scale-tags` tiny images under scale/, deterministic from --seed.

    Each image: a unique config, a layer shared by the repository's tags and a unique layer,
    so a copier needs per image two uploads and a manifest PUT, and per repository one more
    upload (or a mount): requests per image measure per-image overhead, not bulk bytes.
    """
    tree, images = StorageTree(data), []
    for r in range(a.scale_repos):
        repo = f"{SCALE_PREFIX}/r{r + 1:04d}"
        rng = random.Random(f"{a.seed}/{repo}")
        shared = rng.randbytes(rng.randint(2048, 8192))
        for t in range(a.scale_tags):
            tag = f"v{t + 1}"
            config = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                      "config": {"Labels": {"bench.repo": repo, "bench.tag": tag}}}
            images.append(tree.image(repo, tag, config, [shared, rng.randbytes(rng.randint(256, 2048))]))
    return images


def start_scale_source(reg, a):
    """Writes the scale corpus before the registry starts, then checks a sample over HTTP."""
    t0 = time.time()
    images = build_scale(reg.data, a)
    reg.start()
    sample = [i for n, i in enumerate(images) if (n // a.scale_tags) % 50 == 0]
    v = verify(reg, sample, SCALE_PREFIX, catalog="subset")
    if not v["ok"] or v["repos_seen"] != a.scale_repos:
        sys.exit(f"scale source does not hold the corpus ({v['repos_seen']} repos): {v['first']}")
    log(f"scale corpus: {corpus_stats(images)} written in {time.time() - t0:.1f}s "
        f"({len(sample)} images checked over HTTP)")
    return images


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
def verify(reg, images, prefix, blobs=True, catalog="exact"):
    """Target holds exactly `images` under prefix: repos, tags, digests, children, blobs.

    catalog="subset" checks a sample: its repositories must be listed among others.
    """
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
    if catalog == "exact" and got_repos != sorted(want):
        problems.append(f"repositories {got_repos[:20]} != {sorted(want)[:20]} ({len(got_repos)}, {len(want)})")
    elif catalog == "subset" and not set(want) <= set(got_repos):
        problems.append(f"repositories {sorted(set(want) - set(got_repos))[:20]} not listed")
    seen, images_ok = set(), 0
    for repo, tags in sorted(want.items()):
        st, _, body = h.req("GET", f"/v2/{repo}/tags/list")
        got = sorted((json.loads(body).get("tags") or []) if st == 200 else [])
        if got != sorted(tags):
            problems.append(f"{repo}: tags {got} != {sorted(tags)}")
        for tag, img in tags.items():
            st, hd, _ = h.req("HEAD", f"/v2/{repo}/manifests/{tag}", {"Accept": ACCEPT})
            if st != 200 or hd.get("docker-content-digest") != img["digest"]:
                problems.append(f"{repo}:{tag}: {st} {hd.get('docker-content-digest')} != {img['digest']}")
            else:
                images_ok += 1  # how far a run that was stopped at its timeout got
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
    return {"ok": not problems, "problems": len(problems), "first": problems[:5], "blobs_checked": len(seen),
            "repos_seen": len(got_repos), "images_ok": images_ok}


# --------------------------------------------------------------------------- main
SCENARIOS = "full,noop,newtag,big,rules,scale,scalenoop,curl"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small corpora and a 64 MiB big layer (smoke test)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repos", type=int)
    ap.add_argument("--tags", type=int)
    ap.add_argument("--multiarch", type=int, default=2, help="first N repos: last tag is a two-platform index")
    ap.add_argument("--base-pool", type=int, default=4, help="base layers shared across repositories")
    ap.add_argument("--base-size", help="MiB range lo:hi (default 10:20)")
    ap.add_argument("--repo-size", help="MiB range (default 5:15)")
    ap.add_argument("--uniq-size", help="MiB range (default 2:8)")
    ap.add_argument("--big-mib", type=int, help="size of the single big layer (default 1024)")
    ap.add_argument("--scale-repos", type=int, help="repositories of the scale corpus (default 1000)")
    ap.add_argument("--scale-tags", type=int, help="tags per repository of the scale corpus (default 10)")
    ap.add_argument("--tools", default="skopeo,regkeeper")
    ap.add_argument("--scenarios", default=SCENARIOS)
    ap.add_argument("--regkeeper", default=os.path.join(ROOT, "target", "release", "regkeeper"),
                    help="binary (built with cargo build --release when it is the default and missing)")
    ap.add_argument("--regkeeper-baseline", help="a second binary, measured as tool regkeeper-base")
    ap.add_argument("--work", help="work dir (default: a new dir under /tmp, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--registry-bin", default="/usr/bin/docker-registry")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per timed tool run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of `rules` per regkeeper binary; beyond the first, regkeeper and regkeeper-base "
                         "alternate at the end, and the wall target compares medians (load moves single runs)")
    ap.add_argument("--skopeo-scale-timeout", type=int, default=900,
                    help="seconds for skopeo on the scale corpus (it copies image by image; 0 skips it)")
    a = ap.parse_args()
    q = a.quick
    a.repos = a.repos or (6 if q else 20)
    a.tags = a.tags or (3 if q else 5)
    a.base_size = a.base_size or ("0.5:1" if q else "10:20")
    a.repo_size = a.repo_size or ("0.25:0.75" if q else "5:15")
    a.uniq_size = a.uniq_size or ("0.1:0.4" if q else "2:8")
    a.big_mib = a.big_mib or (64 if q else 1024)
    a.scale_repos = a.scale_repos or (50 if q else 1000)
    a.scale_tags = a.scale_tags or (4 if q else 10)
    return a


def main():
    a = parse_args()
    tools, scenarios = a.tools.split(","), a.scenarios.split(",")
    if a.regkeeper_baseline and "regkeeper-base" not in tools:
        tools.append("regkeeper-base")
    for t in ("skopeo", "curl", a.registry_bin):
        if not shutil.which(t):
            sys.exit(f"{t} not found (Debian: apt-get install skopeo curl docker-registry)")

    work = a.work or tempfile.mkdtemp(prefix="regkeeper-bench-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    b = None

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        b = Bench(a, tools, scenarios, work)
        return b.run()
    finally:
        for r in b.regs if b else []:
            r.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def regkeeper_error(tool, binary):
    """Why `binary` cannot be measured, or None; builds the default binary when it is missing."""
    if os.access(binary or "", os.X_OK):
        return None
    if tool == "regkeeper" and binary == os.path.join(ROOT, "target", "release", "regkeeper"):
        log("building regkeeper (cargo build --release) ...")
        r = subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            return "cargo build --release failed: " + r.stderr.strip()[-1500:]
        if os.access(binary, os.X_OK):
            return None
    return f"{binary} is not executable"


def loadavg():
    """1-minute load: other work on a shared 2-core machine moves every wall figure."""
    return round(os.getloadavg()[0], 2)


class Bench:
    """One benchmark run: registries, corpora, the command of each tool per corpus, measured rows."""

    def __init__(self, a, tools, scenarios, work):
        self.a, self.tools, self.scenarios, self.work = a, tools, scenarios, work
        self.results, self.regs, ports = [], [], set()
        self.bins = {"regkeeper": a.regkeeper, "regkeeper-base": a.regkeeper_baseline}
        self.src = Registry("src", work, ports, a.registry_bin)
        self.dst = Registry("dst", work, ports, a.registry_bin)
        self.regs += [self.src, self.dst]
        self.scale_src = None
        if {"scale", "scalenoop"} & set(scenarios):
            self.scale_src = Registry("scale-src", work, ports, a.registry_bin)
            self.regs.append(self.scale_src)
        self.sk = Skopeo(work)
        self.scale_images = []
        self.ok = {}  # (tool, scenario) -> the run succeeded: a no-op after a failed copy means nothing

    # ---- setup
    def setup(self):
        self.src.start(), self.dst.start()
        log(f"registries: source {self.src.addr}, target {self.dst.addr} (work dir {self.work})")
        if self.scale_src:
            self.scale_images = start_scale_source(self.scale_src, self.a)
            log(f"scale source {self.scale_src.addr}")
        self.setup_corpus()

    def setup_corpus(self):
        a, t0 = self.a, time.time()
        self.layout = os.path.join(self.work, "corpus")
        self.corpus = Corpus(self.layout, a.seed)
        specs = build_corpus(self.corpus, a)
        self.base_images = list(self.corpus.images)
        self.big = self.corpus.add(f"{BIG_PREFIX}/layer", "v1",
                                   lambda arch: [(f"big/{arch}", a.big_mib * MiB, a.big_mib * MiB)],
                                   ["amd64"]) if {"big", "curl"} & set(self.scenarios) else None
        self.stats = corpus_stats(self.base_images)
        log(f"corpus: {self.stats} generated in {time.time() - t0:.1f}s")
        t0 = time.time()
        self.sk.push(self.layout, self.src.addr, self.corpus.images)
        v = verify(self.src, self.base_images, PREFIX)
        if not v["ok"]:
            sys.exit(f"source does not hold the corpus: {v}")
        log(f"pushed to source in {time.time() - t0:.1f}s")
        # the new tag for `newtag`: built now (deterministic), pushed before each tool's newtag run
        ri = min(6, a.repos - 1)
        self.new_repo, new_tag = f"{PREFIX}/repo{ri + 1:02d}", f"v{a.tags + 1}"
        self.newimg = self.corpus.add(self.new_repo, new_tag, specs(ri, self.new_repo, new_tag), ["amd64"])

    # ---- tool commands
    def rk_config(self, tool, kind):
        """regkeeper config per tool (own state dir) and corpus kind.

        single: one `bench/*` rule (and `big`); rules: one rule per repository, as real
        configurations mirror one upstream image per rule into one registry; scale: one `/*` rule.
        """
        src = self.scale_src if kind == "scale" else self.src
        if kind == "single":
            rules = [("bench", f"{PREFIX}/*"), ("big", f"{BIG_PREFIX}/*")]
        elif kind == "rules":
            rules = [(r.split("/")[-1], r) for r in sorted({i["repo"] for i in self.base_images})]
        else:
            rules = [("scale", f"{SCALE_PREFIX}/*")]
        path = os.path.join(self.work, f"{tool}-{kind}.toml")
        with open(path, "w") as f:
            f.write(f'''version = 1
[daemon]
state_dir = "{self.state_dir(tool)}"
listen = ""
max_concurrent_transfers = 8
[registries."{src.addr}"]
plain_http = true
[registries."{self.dst.addr}"]
plain_http = true
chunk_size = "0"
''' + "".join(f'''[[rule]]
name = "{name}"
source = "{src.addr}/{repo}"
targets = ["{self.dst.addr}/{repo}"]
''' for name, repo in rules))
        return path

    def state_dir(self, tool):
        return os.path.join(self.work, f"{tool}-state")

    def skopeo_cmd(self, src, prefix, repos, cold):
        """One `skopeo sync` for all repositories: how skopeo mirrors many repositories at once."""
        cache = os.path.join(self.work, "skopeo-cache", "sync")
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        y = os.path.join(self.work, f"skopeo-{prefix}.yaml")
        with open(y, "w") as f:
            f.write(f"{src.addr}:\n  tls-verify: false\n  images:\n" + "".join(f"    {r}: []\n" for r in repos))
        return self.sk.cmd(cache, ["sync", "--all", "--preserve-digests", "--src", "yaml", "--dest", "docker",
                                   "--dest-tls-verify=false", y, f"{self.dst.addr}/{prefix}"])

    def tool_cmd(self, tool, kind, cold):
        """kind: bench (single rule), big, rules (one rule per repository), scale."""
        if tool == "skopeo":
            src, prefix, imgs = {"bench": (self.src, PREFIX, self.base_images), "rules": (self.src, PREFIX, self.base_images),
                                 "big": (self.src, BIG_PREFIX, [self.big]),
                                 "scale": (self.scale_src, SCALE_PREFIX, self.scale_images)}[kind]
            return self.skopeo_cmd(src, prefix, sorted({i["repo"] for i in imgs}), cold)
        if cold:
            shutil.rmtree(self.state_dir(tool), ignore_errors=True)
        cfg = self.rk_config(tool, kind if kind in ("rules", "scale") else "single")
        return [self.bins[tool], "sync", "-c", cfg] + ([kind] if kind in ("bench", "big") else []), None

    # ---- measuring
    def measure(self, tool, scn, cmd_env, expect, prefix, **kw):
        """kw: source (registry), pre (callable inside the marks), timeout, blobs (verify blobs)."""
        src, dst = kw.get("source") or self.src, self.dst
        os.sync()
        time.sleep(0.5)
        load0, b = loadavg(), (src.mark(), dst.mark())
        if kw.get("pre"):
            kw["pre"]()
        r = run_measured(cmd_env[0], env=cmd_env[1], timeout=kw.get("timeout") or self.a.timeout)
        time.sleep(0.3)  # access log flush
        e = src.mark(), dst.mark()
        row = {"tool": tool, "scenario": scn, **r, "load": [load0, loadavg()],
               "source": src.diff(b[0], e[0]), "target": dst.diff(b[1], e[1])}
        if expect is not None:
            row["expect"] = corpus_stats(expect)
            row["verify"] = verify(dst, expect, prefix, blobs=kw.get("blobs", True))
        else:
            row["verify"] = None
        row["figures"] = issue11_figures(row)
        self.ok[(tool, scn)] = r["rc"] == 0 and (row["verify"] is None or row["verify"]["ok"])
        self.results.append(row)
        self.log_row(row)
        self.save_partial()
        return row

    def save_partial(self):
        """Rows so far, so a long run that is stopped still leaves its figures."""
        os.makedirs(os.path.dirname(self.a.out), exist_ok=True)
        with open(self.a.out + ".partial", "w") as f:
            json.dump({"args": vars(self.a), "results": self.results}, f, indent=1)

    def log_row(self, row):
        r = row
        if r["rc"]:
            lines = [x for x in r["output_tail"].splitlines() if x.strip() and not x.lstrip()[:1].isdigit()]
            log(f"  {r['tool']} {r['scenario']}: exit {r['rc']}: " + " | ".join(lines[:3])[:300])
        v = r["verify"]
        log(f"  {r['tool']:14} {r['scenario']:9} rc={r['rc']} wall={r['wall_s']}s cpu={r['cpu_s']}s "
            f"rss={r['peak_rss_mb']}MB load={r['load']} req src={r['source']['requests']} "
            f"dst={r['target']['requests']} mounts={r['target']['mounts']} "
            f"verify={'ok' if not v or v['ok'] else str(v['first'][:2])[:150]}")

    # ---- scenarios
    def s_full(self, tool):
        self.dst.wipe_restart()
        self.measure(tool, "full", self.tool_cmd(tool, "bench", cold=True), self.base_images, PREFIX)

    def s_noop(self, tool):
        self.measure(tool, "noop", self.tool_cmd(tool, "bench", cold=False), self.base_images, PREFIX)

    def s_newtag(self, tool):
        self.sk.push(self.layout, self.src.addr, [self.newimg])
        try:
            self.measure(tool, "newtag", self.tool_cmd(tool, "bench", cold=False),
                         self.base_images + [self.newimg], PREFIX)
        finally:  # back to the base corpus at the source (DELETE by digest removes the tag)
            for reg in (self.src, self.dst):
                reg.http.req("DELETE", f"/v2/{self.new_repo}/manifests/{self.newimg['digest']}")

    def s_big(self, tool):
        self.dst.wipe_restart()
        self.measure(tool, "big", self.tool_cmd(tool, "big", cold=True), [self.big], BIG_PREFIX)

    def s_rules(self, tool):
        """Issue 11 (a): the corpus as one rule per repository, into an empty target."""
        self.dst.wipe_restart()
        self.measure(tool, "rules", self.tool_cmd(tool, "rules", cold=True), self.base_images, PREFIX)

    def scale_timeout(self, tool):
        return self.a.skopeo_scale_timeout if tool == "skopeo" else None

    def s_scale(self, tool):
        """Issue 11 (b): 10,000 tiny images, one `/*` rule, into an empty target."""
        if self.scale_timeout(tool) == 0:
            log(f"  {tool} scale: skipped (--skopeo-scale-timeout 0)")
            return
        self.dst.wipe_restart()
        self.measure(tool, "scale", self.tool_cmd(tool, "scale", cold=True), self.scale_images, SCALE_PREFIX,
                     source=self.scale_src, timeout=self.scale_timeout(tool))

    def s_scalenoop(self, tool):
        if not self.ok.get((tool, "scale")):
            log(f"  {tool} scalenoop: skipped (no complete scale copy before it)")
            return
        # blobs were verified after the copy; a no-op must still leave every tag at its digest
        self.measure(tool, "scalenoop", self.tool_cmd(tool, "scale", cold=False), self.scale_images,
                     SCALE_PREFIX, source=self.scale_src, timeout=self.scale_timeout(tool), blobs=False)

    def s_curl(self):
        """The physical limit: one monolithic upload of the big layer."""
        self.dst.wipe_restart()
        blob = self.big["blobs"][1]
        cmd = ["curl", "-sS", "-f", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
               "-T", self.corpus.path(blob["digest"]), "URL"]

        def post():  # inside the marks (counted), outside the timed PUT
            _, hd, _ = self.dst.http.req("POST", f"/v2/{BIG_PREFIX}/curl/blobs/uploads/")
            url = urllib.parse.urljoin(f"http://{self.dst.addr}/", hd["location"])
            cmd[-1] = url + ("&" if "?" in url else "?") + "digest=" + blob["digest"]
        row = self.measure("curl", "curl", (cmd, None), None, BIG_PREFIX, pre=post)
        st, hd, _ = self.dst.http.req("HEAD", f"/v2/{BIG_PREFIX}/curl/blobs/{blob['digest']}")
        ok = st == 200 and int(hd.get("content-length", -1)) == blob["size"]
        row["verify"] = {"ok": ok, "problems": 0 if ok else 1, "first": [] if ok else [f"blob HEAD {st}"]}

    def run_tool(self, tool):
        if tool != "skopeo":
            err = regkeeper_error(tool, self.bins.get(tool))
            if err:
                log(err)
                self.results.append({"tool": tool, "scenario": "all", "rc": None, "error": err})
                return
        log(f"{tool}:")
        for scn in self.scenarios:
            fn = getattr(self, f"s_{scn}", None)
            if fn and scn != "curl":
                fn(tool)

    def rules_repeats(self):
        """Extra `rules` runs, alternating the regkeeper binaries so that both see the same load."""
        rk = [t for t in self.tools if t != "skopeo" and not regkeeper_error(t, self.bins.get(t))]
        if "rules" not in self.scenarios or self.a.repeat < 2 or not rk:
            return
        log(f"rules, {self.a.repeat - 1} more alternating run(s) of {', '.join(rk)}:")
        for _ in range(self.a.repeat - 1):
            for tool in rk:
                self.s_rules(tool)

    def run(self):
        self.setup()
        for tool in self.tools:
            self.run_tool(tool)
        self.rules_repeats()
        if "curl" in self.scenarios:
            self.s_curl()
        return self.report()

    def report(self):
        a = self.a
        for row in self.results:
            if row.get("scenario") in ("big", "curl") and row.get("wall_s") and row["rc"] == 0:
                row["throughput_mib_s"] = round(a.big_mib / row["wall_s"], 1)
        rep = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(a), "corpus": self.stats,
               "scale_corpus": corpus_stats(self.scale_images) if self.scale_images else None,
               "big_layer_mib": a.big_mib, "new_tag": f"{self.new_repo}:{self.newimg['tag']}",
               "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
               "versions": versions(a), "results": self.results,
               "targets": check_targets(self.results, self.stats["tags"]), "targets_11": check_issue11(self.results)}
        print_table(rep)
        print_issue11(rep)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(rep, f, indent=1)
        if os.path.exists(a.out + ".partial"):
            os.remove(a.out + ".partial")
        log(f"JSON: {a.out}")
        return 0


def versions(a):
    def first(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None

    def binary(path):  # which build was measured: path and content hash, not this checkout's HEAD
        try:
            with open(path, "rb") as f:
                return f"{path} sha256:{hashlib.sha256(f.read()).hexdigest()[:12]}"
        except (OSError, TypeError):
            return None
    return {"skopeo": first(["skopeo", "--version"]), "registry": first([a.registry_bin, "--version"]),
            "checkout": first(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
            "regkeeper": binary(a.regkeeper), "regkeeper-base": binary(a.regkeeper_baseline)}


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


def issue11_figures(r):
    """Source blob bytes read against the unique blob bytes the target must hold (1.00 = no blob
    read twice), mounts, target requests per image, requests at both registries per tag."""
    s, t, e = r["source"], r["target"], r.get("expect") or {}
    tags, uniq = e.get("tags"), e.get("bytes")
    return {"blob_gets": s["blob_gets"], "blobs": e.get("blobs"), "read_mib": round(s["blob_bytes_out"] / MiB, 1),
            "unique_mib": round((uniq or 0) / MiB, 1), "read_ratio": round(s["blob_bytes_out"] / uniq, 3) if uniq else None,
            "mounts": t["mounts"], "mount_misses": t["mount_misses"],
            "dst_per_image": round(t["requests"] / tags, 2) if tags else None,
            "all_per_tag": round((s["requests"] + t["requests"]) / tags, 3) if tags else None,
            **cpu_floor(r)}


def cpu_floor(r):
    """The wall this machine cannot beat for the requests the run sent: the CPU the tool and both
    registries used, spread over every core. wall/floor near 1 means the run was bound by the
    machine's CPU (mostly the registries'), not by the tool waiting."""
    s, t = r["source"], r["target"]
    busy = r["cpu_s"] + s["cpu_s"] + t["cpu_s"]
    floor = busy / (os.cpu_count() or 1)
    return {"registry_cpu_s": round(s["cpu_s"] + t["cpu_s"], 1), "cpu_floor_s": round(floor, 1),
            "wall_over_floor": round(r["wall_s"] / floor, 2) if floor else None,
            "src_ms_per_req": round(1000 * s["cpu_s"] / s["requests"], 2) if s["requests"] else None,
            "dst_ms_per_req": round(1000 * t["cpu_s"] / t["requests"], 2) if t["requests"] else None}


def check_issue11(results):
    """Issue 11's targets, for each regkeeper binary measured (regkeeper-base is today's when given)."""
    get = {(r["tool"], r["scenario"]): r for r in results if r.get("wall_s") is not None}
    out = []

    def add(tool, name, value, limit, ok):
        out.append({"tool": tool, "target": name, "value": value, "limit": limit,
                    "result": "n/a" if ok is None or value is None else "PASS" if ok else "MISS"})

    def good(r):
        return r["rc"] == 0 and (r["verify"] is None or r["verify"]["ok"])

    def fig(tool, scn, name, key, limit, cmp):
        r = get.get((tool, scn))
        v = r and (r["figures"][key] if key in r["figures"] else r[key])
        add(tool, f"{scn}: {name}", v, limit, r and v is not None and good(r) and cmp(v, limit))
    le, ge = (lambda v, lim: v <= lim), (lambda v, lim: v >= lim)
    for tool in [t for t in ("regkeeper", "regkeeper-base") if any(k[0] == t for k in get)]:
        fig(tool, "full", "source blob bytes read / unique = 1.00", "read_ratio", 1.005, le)
        fig(tool, "rules", "source blob bytes read / unique = 1.00", "read_ratio", 1.005, le)
        fig(tool, "rules", "mounts >= 40", "mounts", 40, ge)
        r = get.get((tool, "rules"))
        reuse = r and (r.get("expect") or {}).get("cross_repo")
        add(tool, f"rules: mounts = every cross-repository reuse ({reuse})", r and r["figures"]["mounts"], reuse,
            r and reuse is not None and good(r) and r["figures"]["mounts"] >= reuse)
        fig(tool, "scale", "full copy wall <= 150 s", "wall_s", 150, le)
        fig(tool, "scale", "target requests per image <= 5.5", "dst_per_image", 5.5, le)
        fig(tool, "scalenoop", "requests at both registries per tag <= 1.15", "all_per_tag", 1.15, le)
        rows = [get.get((tool, s)) for s in ("scale", "scalenoop")]
        rss = max((r["peak_rss_mb"] for r in rows if r), default=None)
        add(tool, "scale+scalenoop: peak RSS <= 64 MB", rss, 64, rss is not None and all(r and good(r) for r in rows)
            and rss <= 64)
    walls = {t: [r for r in results if r["tool"] == t and r.get("scenario") == "rules" and r.get("wall_s")]
             for t in ("regkeeper", "regkeeper-base")}
    rk, base = (statistics.median(r["wall_s"] for r in walls[t]) if walls[t] else None for t in walls)
    v = round(rk / base, 3) if rk and base else None
    n = min(len(w) for w in walls.values())
    add("regkeeper", f"rules: full-copy wall <= 0.75x regkeeper-base (median of {n})", v, 0.75,
        v is not None and all(good(r) for w in walls.values() for r in w) and v <= 0.75)
    return out


def print_issue11(rep):
    sc = rep.get("scale_corpus")
    if sc:
        print(f"\nscale corpus: {sc['repos']} repos, {sc['tags']} tags, {sc['blobs']} blobs, {sc['mib']} MiB")
    hdr = ("tool", "scenario", "wall s", "load 1m", "rss MB", "src blob GETs/blobs", "read MiB/unique",
           "read/unique", "mounts (miss)", "dst req/image", "all req/tag", "tags ok", "registry cpu s",
           "ms cpu/req src,dst", "cpu floor s", "wall/floor")
    rows = []
    for r in rep["results"]:
        f = r.get("figures")
        if not f or r["scenario"] == "curl":
            continue
        rows.append((r["tool"], r["scenario"], f"{r['wall_s']:.2f}", "/".join(map(str, r["load"])),
                     f"{r['peak_rss_mb']:.0f}", f"{f['blob_gets']}/{f['blobs']}", f"{f['read_mib']}/{f['unique_mib']}",
                     f["read_ratio"], f"{f['mounts']} ({f['mount_misses']})", f["dst_per_image"], f["all_per_tag"],
                     f"{r['verify']['images_ok']}/{r['expect']['tags']}" + ("" if r["verify"]["ok"] else " NO"),
                     f.get("registry_cpu_s"), f"{f.get('src_ms_per_req')},{f.get('dst_ms_per_req')}",
                     f.get("cpu_floor_s"), f.get("wall_over_floor")))
    rows = [tuple(str(x) for x in row) for row in rows]
    w = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(hdr)]
    print("\nissue 11 figures (load 1m = load average before/after the run; read = blob bytes served by the source;"
          f"\n  cpu floor = CPU of the tool and both registries / {os.cpu_count()} cores: no tool sending these requests"
          " to these registries here finishes sooner):")
    for row in [hdr, tuple("-" * x for x in w)] + rows:
        print("  ".join(x.ljust(w[i]) for i, x in enumerate(row)))
    print("\ntargets (issue 11):")
    for t in rep["targets_11"]:
        print(f"  {t['result']:4}  {t['tool']:14} {t['target']:58} value={t['value']}")


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
