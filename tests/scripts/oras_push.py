"""Push files to a registry with oras-py, print the manifest digest.

Run with the python of the test virtualenv (oras==0.2.43), by the ocifs
test harness (tests/src/tools.rs, `oras_push`):

    oras_push.py --target HOST/REPO:TAG [--username U --password P]
                 [--annotation-file FILE] [--manifest-annotation K=V]...
                 [--config PATH[:MEDIATYPE]] [--no-unpack-annotation]
                 [--subject MEDIATYPE@DIGEST@SIZE]
                 FILE[:MEDIATYPE]...

Plain HTTP only (the test registries are loopback). The auth backend follows
the registry: HTTP Basic if `GET /v2/` asks for Basic, tokens otherwise.

oras-py tars and gzips a directory into one layer but, unlike the oras CLI,
does not mark it for unpacking; unless --no-unpack-annotation is given, this
script adds the oras CLI's annotations to such layers
(`io.deis.oras.content.unpack: "true"` and `io.deis.oras.content.digest`, the
digest of the uncompressed tar).

oras-py 0.2.43 has no artifactType option, so none is offered here.
"""

import argparse
import gzip
import hashlib
import os
import sys

import requests

import oras.defaults
import oras.oci
import oras.provider
import oras.utils

UNPACK = "io.deis.oras.content.unpack"
CONTENT_DIGEST = "io.deis.oras.content.digest"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def directory_layers(files):
    """Digest of each directory's tar.gz (oras-py's is reproducible: no
    mtimes) -> digest of the uncompressed tar."""
    out = {}
    for spec in files:
        path = oras.utils.split_path_and_content(spec).path
        if not os.path.isdir(path):
            continue
        tgz = oras.utils.make_targz(path)
        try:
            with gzip.open(tgz, "rb") as f:
                tar_digest = "sha256:" + hashlib.sha256(f.read()).hexdigest()
            out[sha256_file(tgz)] = tar_digest
        finally:
            os.remove(tgz)
    return out


def auth_backend(host):
    r = requests.get(f"http://{host}/v2/", timeout=30)
    scheme = r.headers.get("WWW-Authenticate", "").split(" ", 1)[0].lower()
    return "basic" if r.status_code == 401 and scheme == "basic" else "token"


def subject(spec):
    """An oras.oci.Subject from MEDIATYPE@DIGEST@SIZE, or None."""
    if not spec:
        return None
    media_type, digest, size = spec.split("@")
    return oras.oci.Subject(mediaType=media_type, digest=digest, size=int(size))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT/REPO:TAG")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--annotation-file")
    p.add_argument("--manifest-annotation", action="append", default=[], metavar="K=V")
    p.add_argument("--config", help="PATH[:MEDIATYPE] of the manifest config")
    p.add_argument("--no-unpack-annotation", action="store_true")
    p.add_argument("--subject", help="MEDIATYPE@DIGEST@SIZE: push a referrer of that manifest")
    p.add_argument("files", nargs="+", metavar="FILE[:MEDIATYPE]")
    args = p.parse_args()

    host = args.target.split("/", 1)[0]
    registry = oras.provider.Registry(host, insecure=True, auth_backend=auth_backend(host))
    if args.username is not None:
        # Not registry.login(): that writes a docker config.
        registry.auth.set_basic_auth(args.username, args.password or "")

    if not args.no_unpack_annotation:
        dirs = directory_layers(args.files)
        if dirs:
            upload_manifest = registry.upload_manifest

            def annotate_then_upload(manifest, container):
                for layer in manifest.get("layers", []):
                    tar_digest = dirs.get(layer.get("digest"))
                    if tar_digest:
                        annotations = layer.setdefault("annotations", {})
                        annotations[UNPACK] = "true"
                        annotations[CONTENT_DIGEST] = tar_digest
                return upload_manifest(manifest, container)

            registry.upload_manifest = annotate_then_upload

    annotations = {}
    for kv in args.manifest_annotation:
        k, _, v = kv.partition("=")
        annotations[k] = v

    response = registry.push(
        target=args.target,
        files=args.files,
        manifest_annotations=annotations or None,
        annotation_file=args.annotation_file,
        manifest_config=args.config,
        subject=subject(args.subject),
        disable_path_validation=True,
        quiet=True,
    )
    if response.status_code not in (200, 201):
        sys.exit(f"oras_push.py: pushing the manifest got {response.status_code}: {response.text}")
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:
        container = registry.get_container(args.target)
        head = registry.do_request(
            f"http://{container.manifest_url()}",
            "HEAD",
            headers={"Accept": oras.defaults.default_manifest_media_type},
        )
        digest = head.headers.get("Docker-Content-Digest")
    if not digest:
        sys.exit("oras_push.py: the registry did not say the manifest's digest")
    print(digest)


if __name__ == "__main__":
    main()
