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
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse

from benchlib.common import BIG_PREFIX, HERE, MiB, PREFIX, ROOT, SCALE_PREFIX, log
from benchlib.corpus import Corpus, build_corpus, corpus_stats, start_scale_source
from benchlib.registry import Registry, loadavg, verify
from benchlib.report import check_issue11, check_targets, issue11_figures, print_issue11, print_table, versions
from benchlib.tools import Skopeo, regkeeper_error, run_measured


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


if __name__ == "__main__":
    sys.exit(main())
