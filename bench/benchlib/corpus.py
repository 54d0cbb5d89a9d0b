"""The deterministic corpora: the OCI layout pushed with skopeo, and the scale corpus written as a storage tree."""
import collections
import hashlib
import json
import os
import random
import sys
import time

from benchlib.common import MT_CONFIG, MT_INDEX, MT_LAYER, MT_MANIFEST, MiB, PREFIX, SCALE_PREFIX, canonical, log
from benchlib.registry import verify


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
