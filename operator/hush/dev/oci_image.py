"""OCI image archives built here, byte for byte reproducible, for ``ctr images import``.

A real node must never pull from a registry (the machine may not reach one, and must not
try), so its images are made locally: a layer tarball, an image config, a manifest and an
index in the OCI image layout, tarred into one archive that ``ctr -n k8s.io images import``
takes. Pods then use them with ``imagePullPolicy: Never``.

Everything is deterministic (sorted entries, mtime 0, uid/gid 0, no compression), so the
same inputs give the same digests: an unchanged image is recognised by its digest and not
imported again.

The images of the real node come from one Debian package, ``busybox-static`` (a static
binary, no libc needed): ``busybox`` (serves HTTP from ``/www`` on port 8080, and has
``wget``/``nc`` for tests) and ``pause`` (the pod sandbox image containerd would otherwise
pull from registry.k8s.io). Pure except :func:`write_archive` and :func:`busybox_from_deb`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from hush.dev import errors

LAYER_MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE: Final = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE: Final = "application/vnd.oci.image.index.v1+json"
REGISTRY: Final = "hush.local"
"""A registry name that resolves nowhere: these images exist only in the node's containerd."""
HTTP_PORT: Final = 8080
PAUSE_SLEEP_SECONDS: Final = 2147483647


@dataclasses.dataclass(frozen=True)
class LayerEntry:
    """One file, directory or symlink of a layer."""

    path: str
    content: bytes = b""
    mode: int = 0o644
    kind: bytes = tarfile.REGTYPE
    link_target: str = ""


@dataclasses.dataclass(frozen=True)
class Image:
    """A built image: its reference and the blobs of its OCI layout."""

    reference: str
    manifest_digest: str
    blobs: dict[str, bytes]
    index: dict[str, Any]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def layer_tar(entries: Sequence[LayerEntry]) -> bytes:
    """A reproducible tar of ``entries`` (parents must be listed; order does not matter)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path.lstrip("/"))
            info.type = entry.kind
            info.mode = entry.mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if entry.kind == tarfile.SYMTYPE:
                info.linkname = entry.link_target
                archive.addfile(info)
            elif entry.kind == tarfile.DIRTYPE:
                archive.addfile(info)
            else:
                info.size = len(entry.content)
                archive.addfile(info, io.BytesIO(entry.content))
    return buffer.getvalue()


def build_image(
    *,
    repository: str,
    tag: str,
    layer: bytes,
    command: Sequence[str],
    working_dir: str = "/",
    user: str = "",
) -> Image:
    """The OCI layout of a one-layer linux/amd64 image running ``command``."""
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": list(command),
            "Env": ["PATH=/bin"],
            "WorkingDir": working_dir,
            **({"User": user} if user else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": "hush.dev.oci_image", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    config_bytes = _canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": _digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": _digest(layer), "size": len(layer)}],
    }
    manifest_bytes = _canonical(manifest)
    reference = f"{REGISTRY}/{repository}:{tag}"
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": _digest(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    # ctr names the imported image after this annotation.
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    blobs = {_digest(data): data for data in (layer, config_bytes, manifest_bytes)}
    return Image(
        reference=reference, manifest_digest=_digest(manifest_bytes), blobs=blobs, index=index
    )


def archive_bytes(image: Image) -> bytes:
    """The image as an OCI layout tar archive (what ``ctr images import`` reads)."""
    entries = [
        LayerEntry("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"})),
        LayerEntry("index.json", _canonical(image.index)),
        LayerEntry("blobs", kind=tarfile.DIRTYPE, mode=0o755),
        LayerEntry("blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755),
    ]
    entries += [
        LayerEntry(f"blobs/sha256/{digest.removeprefix('sha256:')}", data)
        for digest, data in image.blobs.items()
    ]
    return layer_tar(entries)


def write_archive(image: Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(archive_bytes(image))
    temporary.replace(path)


def busybox_layer(busybox: bytes, *, index_html: bytes) -> bytes:
    """A root filesystem with a static busybox, ``/bin/sh``, ``/tmp`` and ``/www``."""
    directory = tarfile.DIRTYPE
    return layer_tar(
        [
            LayerEntry("bin", kind=directory, mode=0o755),
            LayerEntry("bin/busybox", busybox, mode=0o755),
            LayerEntry("bin/sh", kind=tarfile.SYMTYPE, mode=0o777, link_target="busybox"),
            LayerEntry("etc", kind=directory, mode=0o755),
            LayerEntry("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:\n"),
            LayerEntry("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
            LayerEntry("tmp", kind=directory, mode=0o1777),
            LayerEntry("www", kind=directory, mode=0o755),
            LayerEntry("www/index.html", index_html),
        ]
    )


@dataclasses.dataclass(frozen=True)
class NodeImages:
    """The images every real node needs."""

    busybox: Image
    pause: Image


def node_images(busybox: bytes, *, version: str) -> NodeImages:
    """The busybox and pause images; the tag carries the package version and layer digest."""
    layer = busybox_layer(busybox, index_html=b"hush real node\n")
    tag = f"{version.replace(':', '_').replace('+', '_').replace('~', '_')}-{_digest(layer)[7:19]}"
    return NodeImages(
        busybox=build_image(
            repository="busybox",
            tag=tag,
            layer=layer,
            command=("/bin/busybox", "httpd", "-f", "-p", str(HTTP_PORT), "-h", "/www"),
        ),
        pause=build_image(
            repository="pause",
            tag=tag,
            layer=layer,
            # PID 1 of the sandbox only holds the namespaces; containerd kills it with SIGKILL.
            command=("/bin/busybox", "sleep", str(PAUSE_SLEEP_SECONDS)),
        ),
    )


def busybox_from_deb(deb: Path) -> bytes:
    """``/bin/busybox`` out of a ``busybox-static`` package file."""
    with tempfile.TemporaryDirectory(prefix="hush-busybox-") as directory:
        result = subprocess.run(
            ["dpkg-deb", "-x", str(deb), directory],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise errors.DevClusterError(f"Cannot unpack {deb}: {result.stderr.strip()}")
        binary = Path(directory) / "bin" / "busybox"
        if not binary.is_file():
            raise errors.DevClusterError(f"{deb} holds no bin/busybox")
        return binary.read_bytes()
