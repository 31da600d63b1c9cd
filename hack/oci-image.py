#!/usr/bin/env python3
"""Pack a root filesystem folder into a single-layer OCI image archive (stdlib only).

The archive is an OCI image layout in a tar (oci-layout, index.json, blobs/sha256/...),
which `ctr images import` accepts (containerd 1.6 and 2.x). The output is deterministic:
entries sorted, mtimes fixed, owners numeric, gzip header without name/time — so the same
rootfs gives the same digests.

  oci-image.py --rootfs DIR --out FILE.tar --name docker.io/rekindle/python-fn:latest \
      --cmd /usr/bin/python3 /app/app.py --env PATH=... --env PYTHONUNBUFFERED=1
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import sys
import tarfile
import tempfile
import time

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

# Folders whose contents never go into the layer (the runtime mounts over them, or they
# are scratch space); the folders themselves are kept.
EMPTY_DIRS = ("dev", "proc", "sys", "tmp", "var/tmp")
# Fixed mtime of every entry (2024-01-01), unless SOURCE_DATE_EPOCH says otherwise. With
# fixed mtimes, Python's default (timestamp-checked) .pyc files would all look stale: build
# the rootfs's .pyc files with `compileall --invalidation-mode unchecked-hash`.
DEFAULT_MTIME = 1704067200


class HashWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, out):
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self):
        self.out.flush()

    @property
    def digest(self):
        return "sha256:" + self.sha.hexdigest()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def iter_tree(root, rel=""):
    """Yield (relative path, absolute path) depth-first in sorted order."""
    for name in sorted(os.listdir(os.path.join(root, rel) if rel else root)):
        rpath = f"{rel}/{name}" if rel else name
        apath = os.path.join(root, rpath)
        yield rpath, apath
        st = os.lstat(apath)
        if stat.S_ISDIR(st.st_mode) and rpath not in EMPTY_DIRS:
            yield from iter_tree(root, rpath)


def write_layer(rootfs, out, mtime, compress):
    """Write the layer tar (optionally gzipped) to `out`; return (diff_id, digest, size)."""
    blob = HashWriter(out)
    gz = None
    if compress:
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=compress)
        raw = HashWriter(gz)
    else:
        raw = blob
    skipped = 0
    with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rpath, apath in iter_tree(rootfs):
            ti = tar.gettarinfo(apath, arcname=rpath)
            if ti is None:  # sockets and the like
                skipped += 1
                continue
            ti.mtime = mtime
            ti.uname = ti.gname = ""
            if ti.isreg():
                with open(apath, "rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti)
    if gz is not None:
        gz.close()
    if skipped:
        print(f"oci-image: skipped {skipped} special files", file=sys.stderr)
    return raw.digest, blob.digest, blob.size


def add_bytes(tar, name, data, mtime):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = mtime
    ti.mode = 0o644
    tar.addfile(ti, io.BytesIO(data))


def add_dir(tar, name, mtime):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mtime = mtime
    ti.mode = 0o755
    tar.addfile(ti)


def goarch():
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", required=True, help="full image name, e.g. docker.io/rekindle/python-fn:latest")
    ap.add_argument("--cmd", nargs="+", required=True)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    ap.add_argument("--mtime", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_MTIME)))
    ap.add_argument("--gzip", type=int, default=6, metavar="LEVEL", help="0 = uncompressed layer")
    args = ap.parse_args()

    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(args.mtime))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".oci-") as tmp:
        layer_path = os.path.join(tmp, "layer")
        with open(layer_path, "wb") as f:
            diff_id, layer_digest, layer_size = write_layer(args.rootfs, f, args.mtime, args.gzip)

        config = {
            "created": created,
            "architecture": goarch(),
            "os": "linux",
            "config": {
                "Cmd": args.cmd,
                "Env": args.env,
                "WorkingDir": args.workdir,
                "Labels": dict(kv.split("=", 1) for kv in args.label),
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "rekindle hack/oci-image.py"}],
        }
        config_b = canonical_json(config)
        config_d = "sha256:" + hashlib.sha256(config_b).hexdigest()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_d, "size": len(config_b)},
            "layers": [{"mediaType": MT_LAYER_GZIP if args.gzip else MT_LAYER_TAR,
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_b = canonical_json(manifest)
        manifest_d = "sha256:" + hashlib.sha256(manifest_b).hexdigest()
        index = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [{
                "mediaType": MT_MANIFEST,
                "digest": manifest_d,
                "size": len(manifest_b),
                "platform": {"architecture": goarch(), "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": args.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }

        tmp_out = os.path.join(tmp, "image.tar")
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}), args.mtime)
            add_bytes(tar, "index.json", canonical_json(index), args.mtime)
            add_dir(tar, "blobs", args.mtime)
            add_dir(tar, "blobs/sha256", args.mtime)
            blobs = sorted([(config_d, config_b), (manifest_d, manifest_b), (layer_digest, None)])
            for digest, data in blobs:
                name = "blobs/sha256/" + digest.split(":", 1)[1]
                if data is not None:
                    add_bytes(tar, name, data, args.mtime)
                else:
                    ti = tarfile.TarInfo(name)
                    ti.size, ti.mtime, ti.mode = layer_size, args.mtime, 0o644
                    with open(layer_path, "rb") as f:
                        tar.addfile(ti, f)
        os.replace(tmp_out, args.out)

    print(json.dumps({"image": args.name, "manifest": manifest_d, "config": config_d,
                      "layer": layer_digest, "layer_size": layer_size, "diff_id": diff_id,
                      "archive": os.path.abspath(args.out),
                      "archive_size": os.path.getsize(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
