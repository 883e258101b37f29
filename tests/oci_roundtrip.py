#!/usr/bin/env python3
"""`make oci-test`: the release image round-trips through a real registry, byte for byte.

    oci_roundtrip.py <archive.oci.tar> <otp_filter.wasm> <version>

Starts Debian's docker-registry (distribution 2.8) on 127.0.0.1 with an OS-picked port and a
scratch storage directory, pushes the archive with `tools/oci_image.sh push` (what a release
runs), pulls it back by digest with skopeo, and checks what Istio's and Envoy Gateway's image
fetchers (pkg/wasm/imagefetcher.go in both, go-containerregistry) will see: an OCI manifest whose
last (and only) layer is application/vnd.oci.image.layer.v1.tar+gzip holding `plugin.wasm`, equal
to the release .wasm. Then renders the release manifests for the pushed image and checks they pin
the digest the registry served. The digest is computed, never written down: the .wasm changes.
The registry is killed and every scratch directory removed, pass or fail.
"""
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REPOSITORY = "pace/otp-filter"
# Loopback only: never through a proxy that the environment may name.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
checks = 0


def ok(what):
    global checks
    checks += 1
    print(f"ok: {what}")


def expect(cond, what):
    if not cond:
        raise AssertionError(what)
    ok(what)


def run(*args, env=None):
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout.strip()


def start_registry(scratch):
    """docker-registry on 127.0.0.1:0; returns the process and the port it logged."""
    if not os.access("/usr/bin/docker-registry", os.X_OK):
        raise AssertionError("/usr/bin/docker-registry is missing (apt-get install docker-registry)")
    config = os.path.join(scratch, "registry.yml")
    with open(config, "w") as f:
        f.write(
            "version: 0.1\n"
            "log: {level: info, formatter: text}\n"
            f"storage: {{filesystem: {{rootdirectory: {os.path.join(scratch, 'storage')}}}}}\n"
            "http: {addr: '127.0.0.1:0'}\n"
        )
    log = open(os.path.join(scratch, "registry.log"), "w+")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", config], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log.seek(0)
        m = re.search(r'listening on 127\.0\.0\.1:(\d+)', log.read())
        if m:
            port = int(m[1])
            with HTTP.open(f"http://127.0.0.1:{port}/v2/", timeout=5) as r:
                if r.status == 200:
                    return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    proc.kill()
    proc.wait()
    raise AssertionError(f"docker-registry did not start:\n{log.read()}")


def manifest_over_http(port, reference):
    """The registry's own answer for a manifest, as a fetcher asks for it."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/{REPOSITORY}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
    )
    with HTTP.open(req, timeout=5) as r:
        return r.headers.get("Content-Type"), r.headers.get("Docker-Content-Digest"), r.read()


def blob(layout, digest):
    with open(os.path.join(layout, "blobs", *digest.split(":")), "rb") as f:
        data = f.read()
    expect(f"sha256:{hashlib.sha256(data).hexdigest()}" == digest, f"blob {digest[:19]}… matches its digest")
    return data


def check_pulled(layout, digest, wasm):
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    expect([m["digest"] for m in index["manifests"]] == [digest], "the pulled layout holds the one image asked for")
    manifest = json.loads(blob(layout, digest))
    expect(manifest.get("mediaType") == OCI_MANIFEST, f"manifest mediaType is {OCI_MANIFEST}")
    expect(manifest["config"]["mediaType"] == OCI_CONFIG, f"config mediaType is {OCI_CONFIG}")
    layers = manifest["layers"]
    expect([l["mediaType"] for l in layers] == [OCI_LAYER_GZIP], f"one layer, {OCI_LAYER_GZIP}")
    expect(manifest.get("annotations", {}).get("module.wasm.image/variant") == "compat", "annotated as the compat variant")
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    layer = blob(layout, layers[0]["digest"])
    diff_id = f"sha256:{hashlib.sha256(gzip.decompress(layer)).hexdigest()}"
    expect(config["rootfs"]["diff_ids"] == [diff_id], "the config's diff_id is the uncompressed layer's")
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
        members = tar.getmembers()
        expect([(m.name, m.isfile()) for m in members] == [("plugin.wasm", True)], "the layer holds only the file plugin.wasm")
        pulled = tar.extractfile(members[0]).read()
    with open(wasm, "rb") as f:
        release = f.read()
    expect(pulled[:4] == b"\0asm", "plugin.wasm starts with the Wasm magic number")
    expect(pulled == release, f"plugin.wasm is the release .wasm, byte for byte ({len(release)} bytes)")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    archive, wasm, version = (os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]), sys.argv[3])
    tool = os.path.join(ROOT, "tools", "oci_image.sh")
    digest = run(tool, "digest", archive)
    expect(re.fullmatch(r"sha256:[0-9a-f]{64}", digest) is not None, f"the archive's image digest is {digest}")
    with tempfile.TemporaryDirectory(prefix="oci-test-") as scratch:
        proc, port = start_registry(scratch)
        try:
            repo = f"127.0.0.1:{port}/{REPOSITORY}"
            env = dict(os.environ, OCI_TLS_VERIFY="false")
            ref = run(tool, "push", archive, f"{repo}:{version}", env=env)
            expect(ref == f"{repo}@{digest}", f"pushed; deploy as {ref}")

            ctype, served, body = manifest_over_http(port, digest)
            expect(ctype == OCI_MANIFEST and served == digest, "the registry serves the manifest by digest, as OCI")
            expect(f"sha256:{hashlib.sha256(body).hexdigest()}" == digest, "the served manifest hashes to the digest")
            flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
            try:
                manifest_over_http(port, flipped)
                raise AssertionError("a digest that was never pushed was served")
            except urllib.error.HTTPError as e:
                expect(e.code == 404, "a digest that was never pushed is 404")

            layout = os.path.join(scratch, "pulled")
            run("skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                f"docker://{ref}", f"oci:{layout}:pulled")
            ok(f"pulled {ref}")
            check_pulled(layout, digest, wasm)

            out = os.path.join(scratch, "manifests")
            run(sys.executable, os.path.join(ROOT, "tools", "release_manifests.py"),
                "--repo", repo, "--digest", digest, "--version", version, "--out", out)
            hexdigest = digest.split(":")[1]
            for path, url in [("istio/otp-filter.yaml", f"oci://{ref}"), ("envoy-gateway/otp-filter.yaml", ref)]:
                with open(os.path.join(out, path)) as f:
                    text = f.read()
                expect(f"url: {url}\n" in text and f"sha256: {hexdigest}\n" in text,
                       f"{path} pins url and sha256 to the served digest")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(f"oci round trip: {checks} passed, 0 failed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED after {checks} checks: {e}", file=sys.stderr)
        sys.exit(1)
