"""The registries under test: processes, their access logs and metrics, and checking what a target holds."""
import collections
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse

from benchlib.common import ACCEPT, ACCESS_RE


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


def loadavg():
    """1-minute load: other work on a shared 2-core machine moves every wall figure."""
    return round(os.getloadavg()[0], 2)
