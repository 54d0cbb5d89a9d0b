"""Figures, targets (PASS/MISS) and the printed tables."""
import hashlib
import os
import statistics
import subprocess

from benchlib.common import MiB, ROOT


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
