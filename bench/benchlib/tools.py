"""Running the tools: skopeo, and measuring one command (wall, CPU, peak RSS)."""
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchlib.common import ROOT, log


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
