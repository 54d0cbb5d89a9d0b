"""Constants and small helpers every part of the benchmark uses."""
import json
import os
import re
import sys


# the bench/ directory (this file is in bench/benchlib/)
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
