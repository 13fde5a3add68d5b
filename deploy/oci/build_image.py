#!/usr/bin/env python3
"""Writes api-guard's filter as an OCI image layout that Istio's WasmPlugin can pull.

The image is the "compat" variant of the Wasm image specification, the one Istio's image fetcher
(istio pkg/wasm/imagefetcher.go) tries first for OCI manifests: exactly one layer, of media type
application/vnd.oci.image.layer.v1.tar+gzip, a gzip tar holding `plugin.wasm`, and the manifest
annotation module.wasm.image/variant=compat. The fetcher reads the last layer and takes the entry
whose base name is plugin.wasm, byte for byte.

The output is reproducible: the same wasm gives the same bytes, so the same manifest digest
(what a WasmPlugin's `sha256` holds for an oci:// URL): the tar has one entry with fixed mtime,
owner and mode; gzip's header has mtime 0 and no file name; every JSON document is written with
sorted keys and no whitespace. Only the Python standard library is used (no Docker daemon).

    build_image.py --wasm target/wasm32-wasip1/release/api_guard.wasm \
                   --out target/oci/api-guard --tag 0.1.0
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
PLUGIN_FILE = "plugin.wasm"
WASM_MAGIC = b"\0asm"
# A fixed timestamp for the tar entry (1970-01-01): builds of the same wasm are identical.
FIXED_MTIME = 0


def canonical_json(document):
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type, blob, annotations=None):
    entry = {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }
    if annotations:
        entry["annotations"] = annotations
    return entry


def layer_tar(wasm):
    """The uncompressed layer: one regular file, plugin.wasm, owned by root, mode 0644."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(PLUGIN_FILE)
        info.size = len(wasm)
        info.mtime = FIXED_MTIME
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(wasm))
    return buffer.getvalue()


def gzip_bytes(data):
    """gzip with mtime 0 and no file name in the header, so the bytes depend on `data` alone."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as out:
        out.write(data)
    return buffer.getvalue()


def build(wasm, tag):
    """The blobs (digest -> bytes), the manifest's descriptor and the index."""
    tar = layer_tar(wasm)
    layer = gzip_bytes(tar)
    config = canonical_json(
        {
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()],
            },
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": descriptor(CONFIG_MEDIA_TYPE, config),
            "layers": [descriptor(LAYER_MEDIA_TYPE, layer)],
            "annotations": {"module.wasm.image/variant": "compat"},
        }
    )
    manifest_descriptor = descriptor(
        MANIFEST_MEDIA_TYPE, manifest, {"org.opencontainers.image.ref.name": tag}
    )
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [manifest_descriptor],
        }
    )
    blobs = {hashlib.sha256(b).hexdigest(): b for b in (layer, config, manifest)}
    return blobs, manifest_descriptor, index


def write_layout(out, blobs, index):
    """Replaces `out` with the image layout (oci-layout, index.json, blobs/sha256/)."""
    if os.path.isdir(out):
        shutil.rmtree(out)
    blob_dir = os.path.join(out, "blobs", "sha256")
    os.makedirs(blob_dir)
    for digest, blob in sorted(blobs.items()):
        with open(os.path.join(blob_dir, digest), "wb") as f:
            f.write(blob)
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical_json({"imageLayoutVersion": "1.0.0"}))
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(index)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wasm", required=True, help="the filter built for wasm32-wasip1")
    parser.add_argument("--out", required=True, help="the image layout directory (replaced)")
    parser.add_argument("--tag", required=True, help="the image's ref name (its tag)")
    parser.add_argument(
        "--digest-file", help="also write the manifest digest (sha256:...) to this file"
    )
    args = parser.parse_args()
    try:
        with open(args.wasm, "rb") as f:
            wasm = f.read()
    except OSError as e:
        sys.exit(f"build_image.py: cannot read the wasm module: {e} (run `make build`)")
    if not wasm.startswith(WASM_MAGIC):
        sys.exit(f"build_image.py: {args.wasm} is not a wasm module")
    blobs, manifest_descriptor, index = build(wasm, args.tag)
    write_layout(args.out, blobs, index)
    digest = manifest_descriptor["digest"]
    if args.digest_file:
        with open(args.digest_file, "w") as f:
            f.write(digest + "\n")
    print(f"{args.out}: {args.tag} {digest} (plugin.wasm, {len(wasm)} bytes)")


if __name__ == "__main__":
    main()
