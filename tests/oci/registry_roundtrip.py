#!/usr/bin/env python3
"""`make test-oci`: the image `make oci` wrote goes through a real registry and comes back unchanged.

1. Reproducibility: building the layout twice from the same wasm gives the same manifest digest.
2. A Debian `docker-registry` (distribution 2.8) on a free loopback port, with its own config and
   storage under target/oci-registry/ (never the system's /var/lib/docker-registry).
3. `skopeo copy` pushes the layout, the registry's manifest digest (Docker-Content-Digest) equals
   the local one, `skopeo copy` pulls it back into a second layout.
4. The pulled image is read the way Istio's image fetcher reads it: the last layer, of media type
   application/vnd.oci.image.layer.v1.tar+gzip, gunzipped, the tar entry named plugin.wasm; its
   bytes equal the built wasm.
5. The WasmPlugin `make oci` rendered carries that same digest as `sha256`.

The registry is stopped (and waited for) whatever happens.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "deploy", "oci"))
import build_image  # noqa: E402

READY_TIMEOUT_SECONDS = 30
COMMAND_TIMEOUT_SECONDS = 120


def fail(message):
    sys.exit(f"test-oci: FAIL: {message}")


def free_loopback_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command):
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS
    )
    if result.returncode != 0:
        fail(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
    return result.stdout


def read_layout(layout):
    """The layout's only manifest: (its digest, its bytes, a blob reader)."""
    with open(os.path.join(layout, "index.json"), "rb") as f:
        index = json.load(f)
    manifests = index.get("manifests", [])
    if len(manifests) != 1:
        fail(f"{layout}: {len(manifests)} manifests in index.json, expected 1")
    digest = manifests[0]["digest"]

    def blob(d):
        algorithm, hex_digest = d.split(":", 1)
        with open(os.path.join(layout, "blobs", algorithm, hex_digest), "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != hex_digest:
            fail(f"{layout}: blob {d} does not match its digest")
        return data

    return digest, blob(digest), blob


def plugin_wasm_as_istio_reads_it(manifest_bytes, blob):
    """What istio pkg/wasm/imagefetcher.go (extractOCIStandardImage) takes out of the image."""
    manifest = json.loads(manifest_bytes)
    layers = manifest.get("layers", [])
    if not layers:
        fail("the manifest has no layer")
    if len(layers) != 1:
        fail(f"the compat variant has exactly one layer, the manifest has {len(layers)}")
    layer = layers[-1]
    if layer["mediaType"] != build_image.LAYER_MEDIA_TYPE:
        fail(f"layer media type {layer['mediaType']}, Istio expects {build_image.LAYER_MEDIA_TYPE}")
    if manifest.get("annotations", {}).get("module.wasm.image/variant") != "compat":
        fail("the manifest lacks the annotation module.wasm.image/variant=compat")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"]))), mode="r:") as tar:
        for member in tar.getmembers():
            if os.path.basename(member.name) == build_image.PLUGIN_FILE:
                extracted = tar.extractfile(member)
                if extracted is None:
                    fail("plugin.wasm is not a regular file")
                return extracted.read()
    fail("plugin.wasm not found in the layer")
    return b""


def wait_for_registry(process, port, log_path):
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path) as f:
                fail(f"docker-registry exited {process.returncode}:\n{f.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    fail(f"docker-registry did not answer on 127.0.0.1:{port} within {READY_TIMEOUT_SECONDS} s")


def registry_manifest_digest(port, name, tag):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/{name}/manifests/{tag}",
        headers={"Accept": build_image.MANIFEST_MEDIA_TYPE},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        header = response.headers.get("Docker-Content-Digest")
        media_type = response.headers.get("Content-Type")
    served = "sha256:" + hashlib.sha256(body).hexdigest()
    if header != served:
        fail(f"the registry says {header} for a manifest whose bytes hash to {served}")
    if media_type != build_image.MANIFEST_MEDIA_TYPE:
        fail(f"the registry serves the manifest as {media_type}")
    return served


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layout", required=True)
    parser.add_argument("--wasm", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--work", required=True, help="registry config, storage and pulls")
    parser.add_argument("--registry", default="docker-registry")
    parser.add_argument("--wasmplugin", help="the WasmPlugin `make oci` rendered")
    args = parser.parse_args()

    with open(args.wasm, "rb") as f:
        wasm = f.read()
    local_digest, local_manifest, local_blob = read_layout(args.layout)

    # 1. Reproducible: a second build of the same wasm has the same digest.
    with tempfile.TemporaryDirectory() as scratch:
        blobs, second, index = build_image.build(wasm, args.tag)
        build_image.write_layout(os.path.join(scratch, "again"), blobs, index)
        if second["digest"] != local_digest:
            fail(f"rebuilding gave {second['digest']}, the layout has {local_digest}")
    if plugin_wasm_as_istio_reads_it(local_manifest, local_blob) != wasm:
        fail("the built layout's plugin.wasm differs from the wasm")
    print(f"test-oci: layout {local_digest} reproducible, plugin.wasm identical")

    # 2. A registry of our own on loopback.
    if os.path.isdir(args.work):
        shutil.rmtree(args.work)
    storage = os.path.join(args.work, "storage")
    os.makedirs(storage)
    port = free_loopback_port()
    config_path = os.path.join(args.work, "config.yml")
    with open(config_path, "w") as f:
        f.write(
            "version: 0.1\n"
            "log: { level: warn }\n"
            f"storage: {{ filesystem: {{ rootdirectory: {json.dumps(storage)} }} }}\n"
            f"http: {{ addr: \"127.0.0.1:{port}\" }}\n"
        )
    # skopeo's own trust policy (accept unsigned images), so the system's policy.json plays no part.
    policy = os.path.join(args.work, "policy.json")
    with open(policy, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    log_path = os.path.join(args.work, "registry.log")
    log = open(log_path, "w")
    process = subprocess.Popen(
        [args.registry, "serve", config_path], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_registry(process, port, log_path)
        reference = f"127.0.0.1:{port}/api-guard:{args.tag}"

        # 3. Push, compare digests, pull back.
        skopeo = ["skopeo", "--policy", policy]
        run(skopeo + ["copy", f"oci:{args.layout}:{args.tag}", f"docker://{reference}",
                      "--dest-tls-verify=false"])
        remote_digest = registry_manifest_digest(port, "api-guard", args.tag)
        if remote_digest != local_digest:
            fail(f"the registry holds {remote_digest}, the layout {local_digest}")
        inspected = json.loads(run(skopeo + ["inspect", "--tls-verify=false",
                                             f"docker://{reference}"]))
        if inspected.get("Digest") != local_digest:
            fail(f"skopeo inspect reports {inspected.get('Digest')}, expected {local_digest}")
        pulled = os.path.join(args.work, "pulled")
        run(skopeo + ["copy", "--src-tls-verify=false", f"docker://{reference}",
                      f"oci:{pulled}:{args.tag}"])
        pulled_digest, pulled_manifest, pulled_blob = read_layout(pulled)
        if pulled_digest != local_digest:
            fail(f"pulled {pulled_digest}, pushed {local_digest}")
        print(f"test-oci: pushed to and pulled from {reference}: {pulled_digest}")

        # 4. What Istio would load.
        if plugin_wasm_as_istio_reads_it(pulled_manifest, pulled_blob) != wasm:
            fail("the pulled image's plugin.wasm differs from the built wasm")
        print(f"test-oci: the pulled plugin.wasm is byte-identical ({len(wasm)} bytes)")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

    # 5. The WasmPlugin names the digest Istio will compare (the manifest's, for oci://).
    if args.wasmplugin:
        with open(args.wasmplugin) as f:
            text = f.read()
        expected = f"sha256: {local_digest.split(':', 1)[1]}"
        if expected not in text:
            fail(f"{args.wasmplugin} lacks `{expected}`")
        print(f"test-oci: {args.wasmplugin} carries the manifest digest")
    print("test-oci: OK")


if __name__ == "__main__":
    main()
