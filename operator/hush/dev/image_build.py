"""Images built here and pushed to the cluster's registry: a Debian base, Hush, the sample app.

A real node pulls by digest from the cluster's own registry (``hush.dev.registry``); this
module fills it. Three images, each cached by content (a hash of everything that goes into
it, mapped to the digest it got), so a warm run asks the registry whether that digest is
there and builds nothing:

- **base** (``hush-base``): Debian bookworm built from the Debian archive with ``mmdebstrap``
  (``--variant=minbase``, the host's apt sources, so the same mirror and snapshot the host
  uses), plus the Python the Dockerfile needs (``python3``, ``python3-venv`` for
  ``hack/image-install.sh``'s venvs, ``python-is-python3`` for its ``python`` command,
  ``ca-certificates`` for pip). One uncompressed layer, pushed over the registry's HTTP API.
- **hush**: the project's own ``Dockerfile``, unchanged, built by ``buildah bud`` (Debian's
  daemonless builder) with ``--build-arg PYTHON_IMAGE=<registry>/hush-base@sha256:...``; the
  Dockerfile's default stays the digest-pinned public base. ``.dockerignore`` applies.
- **sample-app** (``hush-sample-app``): the demo's sample application
  (``hush.dev.sample_app``, standard library only) on the base, serving on port 8080 as UID
  65532, built by buildah from a Containerfile generated here, without network.

No build step reaches the network: the Dockerfile's pip steps read a wheelhouse of exactly
the locked files (``<cache>/image-wheels/<hash of the locks>``, filled once by ``pip download
--require-hashes`` on the host, the same wheelhouse ``tests/image/test_image_install.py``
uses), mounted read-only at ``/mnt`` with ``/etc/xdg/pip/pip.conf`` saying ``no-index``; the
build runs with ``--network=none``. pip still checks every hash against the lock. Both mount
points already exist in the base (``/mnt`` from Debian, ``/etc/xdg`` made empty by
mmdebstrap's hook), so a bind mount leaves no file behind in any layer: buildah creates a
missing mount point in the layer of each RUN, and the final image would carry it.

buildah keeps its storage (overlay) under ``<cache>/images/buildah``. The cache records are
``<cache>/images/built/<name>-<key>.json``. Run it as ``python -m hush.dev.image_build --name
CLUSTER`` (the cluster must be up with ``--real-node``): it prints the digests as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from hush.dev import binaries, errors, layout, registry

logger = logging.getLogger(__name__)

SUITE: Final = "bookworm"
VARIANT: Final = "minbase"
BASE_PACKAGES: Final = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_REPOSITORY: Final = "hush-base"
HUSH_REPOSITORY: Final = "hush"
SAMPLE_APP_REPOSITORY: Final = "hush-sample-app"
SAMPLE_APP_PORT: Final = 8080
IMAGE_USER: Final = "65532:65532"
BUILD_TOOLS: Final[Mapping[str, Path]] = {
    "mmdebstrap": Path("/usr/bin/mmdebstrap"),
    "buildah": Path("/usr/bin/buildah"),
}
HOST_SOURCES: Final = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# What the Dockerfile's COPY lines send (with .dockerignore's exclusions).
HUSH_CONTEXT: Final = (
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "hack/image-install.sh",
    "hack/image-build-requirements.txt",
    "hack/image-requirements.txt",
    "operator",
)
_IGNORED_PARTS: Final = ("__pycache__",)
_IGNORED_SUFFIXES: Final = (".pyc",)
LOCKS: Final = ("hack/image-requirements.txt", "hack/image-build-requirements.txt")
WHEELS_MOUNT: Final = "/mnt"
PIP_CONFIG_MOUNT: Final = "/etc/xdg"
# Run in the new root before it is packed: the mount point of the build's pip configuration.
BASE_HOOKS: Final = ('mkdir -p "$1/etc/xdg"',)
BUILD_PIP_CONF: Final = f"""\
# Mounted at /etc/xdg/pip/pip.conf during the build only (hush.dev.image_build): no index, the
# locked files from the wheelhouse; pip checks them against the lock's hashes.
[global]
no-index = true
find-links = {WHEELS_MOUNT}
"""
_TOOL_TIMEOUT_SECONDS: Final = 3600.0
_HTTP_TIMEOUT_SECONDS: Final = 300.0
LAYER_MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE: Final = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"
_EPOCH: Final = "1970-01-01T00:00:00Z"
SAMPLE_APP_SERVER: Final = """\
\"\"\"Serve hush.dev.sample_app on 0.0.0.0:8080 until SIGTERM (PID 1 needs its own handler).\"\"\"
import signal
import sys

import sample_app


def _stop(signum, frame):
    sys.exit(0)


signal.signal(signal.SIGTERM, _stop)
with sample_app.serving("0.0.0.0", 8080):
    while True:
        signal.pause()
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuiltImage:
    """An image in the registry: where, its digest, and how it was obtained."""

    repository: str
    key: str
    digest: str
    registry_address: str
    seconds: float
    cached: bool

    @property
    def reference(self) -> str:
        """What a pod's ``image:`` names: ``<registry>/<repository>@sha256:...``."""
        return f"{self.registry_address}/{self.repository}@{self.digest}"

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "key": self.key,
            "seconds": round(self.seconds, 1),
            "cached": self.cached,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Images:
    base: BuiltImage
    hush: BuiltImage
    sample_app: BuiltImage


# -- content keys ----------------------------------------------------------------------------


def content_key(parts: Iterable[tuple[str, bytes]]) -> str:
    """A 16-hex-digit key over named parts (names matter: moving a file changes the key)."""
    digest = hashlib.sha256()
    for name, data in parts:
        digest.update(f"{len(name)}:{name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def tree_parts(root: Path, paths: Sequence[str]) -> list[tuple[str, bytes]]:
    """Every file under ``paths`` (relative to ``root``), sorted, build leftovers skipped;
    the executable bit counts (COPY keeps it)."""
    found: list[tuple[str, bytes]] = []
    for relative in paths:
        path = root / relative
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if not file.is_file() or file.suffix in _IGNORED_SUFFIXES:
                continue
            if any(part in _IGNORED_PARTS or part.endswith(".egg-info") for part in file.parts):
                continue
            name = file.relative_to(root).as_posix()
            mode = "x" if os.access(file, os.X_OK) else "-"
            found.append((f"{name}:{mode}", file.read_bytes()))
    return found


def host_sources() -> list[tuple[str, bytes]]:
    """The host's apt sources (the base is built from the same archive the host uses)."""
    sources: list[tuple[str, bytes]] = []
    for entry in HOST_SOURCES:
        files = sorted(entry.glob("*.sources")) + sorted(entry.glob("*.list"))
        for file in files if entry.is_dir() else ([entry] if entry.is_file() else []):
            sources.append((str(file), file.read_bytes()))
    return sources


def _tool_version(tool: str) -> bytes:
    result = subprocess.run([tool, "--version"], capture_output=True, check=False)
    return result.stdout


def base_key() -> str:
    return content_key(
        [
            ("suite", SUITE.encode()),
            ("variant", VARIANT.encode()),
            ("packages", " ".join(BASE_PACKAGES).encode()),
            ("hooks", "\n".join(BASE_HOOKS).encode()),
            ("mmdebstrap", _tool_version("mmdebstrap")),
            *host_sources(),
        ]
    )


# -- the registry's HTTP API -------------------------------------------------------------------


def _opener() -> urllib.request.OpenerDirector:
    # Loopback only: never through a proxy from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(
    url: str, *, method: str, data: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Mapping[str, str]]:
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310 - loopback URL built here
    try:
        with _opener().open(request, timeout=_HTTP_TIMEOUT_SECONDS) as response:
            return int(response.status), dict(response.headers)
    except urllib.error.HTTPError as error:
        return int(error.code), dict(error.headers)


def push_blob(registry_address: str, repository: str, data: bytes) -> str:
    """Upload ``data`` (one monolithic PUT) unless the registry has it; return its digest."""
    digest = _digest(data)
    base = f"http://{registry_address}/v2/{repository}/blobs/"
    status, _ = _request(base + digest, method="HEAD")
    if status == 200:
        return digest
    status, headers = _request(base + "uploads/", method="POST", data=b"")
    location = headers.get("Location") or headers.get("location")
    if status != 202 or not location:
        raise errors.DevClusterError(f"The registry refused an upload to {repository} ({status})")
    upload = urllib.parse.urljoin(f"http://{registry_address}/", location)
    separator = "&" if "?" in upload else "?"
    status, _ = _request(
        f"{upload}{separator}digest={urllib.parse.quote(digest)}",
        method="PUT",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    if status != 201:
        raise errors.DevClusterError(f"The registry refused blob {digest} ({status})")
    return digest


def push_manifest(registry_address: str, repository: str, tag: str, manifest: bytes) -> str:
    status, headers = _request(
        f"http://{registry_address}/v2/{repository}/manifests/{tag}",
        method="PUT",
        data=manifest,
        headers={"Content-Type": MANIFEST_MEDIA_TYPE},
    )
    if status != 201:
        raise errors.DevClusterError(f"The registry refused the manifest of {repository}:{tag}")
    served = headers.get("Docker-Content-Digest") or headers.get("docker-content-digest")
    if served != _digest(manifest):
        raise errors.DevClusterError(f"The registry stored {repository}:{tag} as {served}")
    return served


def base_config(layer: bytes) -> dict[str, Any]:
    """The base image's config: Debian's PATH, ``python3`` as the command, epoch dates."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": _EPOCH,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["python3"],
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created": _EPOCH, "created_by": f"mmdebstrap --variant={VARIANT}"}],
    }


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def push_single_layer(
    registry_address: str, repository: str, tag: str, *, layer: bytes, config: Mapping[str, Any]
) -> str:
    """Push a one-layer OCI image; return its manifest digest."""
    config_bytes = _canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": push_blob(registry_address, repository, config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": push_blob(registry_address, repository, layer),
                "size": len(layer),
            }
        ],
    }
    return push_manifest(registry_address, repository, tag, _canonical(manifest))


# -- cache records -------------------------------------------------------------------------


def _record(cache_root: Path, repository: str, key: str) -> Path:
    return cache_root / "images" / "built" / f"{repository}-{key}.json"


def cached_digest(cache_root: Path, registry_address: str, repository: str, key: str) -> str | None:
    """The digest built earlier from the same inputs, if the registry still serves it."""
    try:
        digest = str(json.loads(_record(cache_root, repository, key).read_text())["digest"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    served = registry.manifest_digest(registry_address, repository, digest)
    return digest if served == digest else None


def _remember(cache_root: Path, repository: str, key: str, digest: str) -> None:
    path = _record(cache_root, repository, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"repository": repository, "key": key, "digest": digest}))
    temporary.replace(path)


# -- tools ---------------------------------------------------------------------------------


def ensure_tools() -> None:
    """mmdebstrap and buildah from Debian, installed with apt-get when root and missing."""
    missing = [name for name, path in BUILD_TOOLS.items() if not os.access(path, os.X_OK)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise errors.DevClusterError(
            "Building the node's images needs " + " ".join(missing) + " (Debian packages): "
            "run as root, or `apt-get install " + " ".join(missing) + "`"
        )
    logger.info("Installing %s with apt-get (the node's images need them)", ", ".join(missing))
    _run(
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        what="apt-get install " + " ".join(missing),
        environment={"DEBIAN_FRONTEND": "noninteractive"},
    )


def _run(
    command: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    environment: Mapping[str, str] | None = None,
) -> str:
    started = time.monotonic()
    result = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=_TOOL_TIMEOUT_SECONDS,
        # SOURCE_DATE_EPOCH: mmdebstrap's and buildah's timestamps, so rebuilds match.
        env={**os.environ, "SOURCE_DATE_EPOCH": "0", **(environment or {})},
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise errors.DevClusterError(f"{what} failed (exit {result.returncode}):\n{tail}")
    logger.info("%s took %.0fs", what, time.monotonic() - started)
    return result.stdout


def buildah_command(cache_root: Path) -> list[str]:
    """buildah with its storage under our cache (overlay on the cache's file system)."""
    storage = cache_root / "images" / "buildah"
    return [
        str(BUILD_TOOLS["buildah"]),
        f"--root={storage / 'root'}",
        f"--runroot={storage / 'run'}",
        "--storage-driver=overlay",
        # No systemd here: runc's cgroups through cgroupfs (this VM runs cgroup v1, hybrid).
        "--cgroup-manager=cgroupfs",
    ]


def bud_command(
    cache_root: Path,
    *,
    containerfile: Path,
    context: Path,
    tag: str,
    build_args: Mapping[str, str],
    volumes: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    """``buildah bud``: each RUN in runc (OCI isolation) without a network namespace's
    uplink (``--network=none``; chroot isolation would force the host's network), the base
    pulled from our registry over plain HTTP, ``volumes`` bind-mounted read-only."""
    arguments = [f"--build-arg={name}={value}" for name, value in sorted(build_args.items())]
    arguments += [f"--volume={source}:{target}:ro" for source, target in volumes]
    return [
        *buildah_command(cache_root),
        "bud",
        "--isolation=oci",
        # Nothing in a build reaches the network (the pip steps read the wheelhouse).
        "--network=none",
        "--layers",
        # A failed step's working container (and its overlay mount) is removed too.
        "--force-rm",
        "--tls-verify=false",
        "--pull=missing",
        "--format=oci",
        f"--file={containerfile}",
        f"--tag={tag}",
        *arguments,
        str(context),
    ]


def _push_built(
    cache_root: Path, tag: str, registry_address: str, repository: str, key: str
) -> str:
    with tempfile.TemporaryDirectory(prefix="hush-push-") as directory:
        digest_file = Path(directory) / "digest"
        _run(
            [
                *buildah_command(cache_root),
                "push",
                "--tls-verify=false",
                f"--digestfile={digest_file}",
                tag,
                f"docker://{registry_address}/{repository}:{key}",
            ],
            what=f"buildah push {repository}",
        )
        digest = digest_file.read_text().strip()
    if not digest.startswith("sha256:"):
        raise errors.DevClusterError(f"buildah push of {repository} reported '{digest}'")
    return digest


# -- the three images ------------------------------------------------------------------------


def build_base(cache_root: Path, registry_address: str) -> BuiltImage:
    began = time.monotonic()
    key = base_key()
    digest = cached_digest(cache_root, registry_address, BASE_REPOSITORY, key)
    if digest is not None:
        return BuiltImage(
            repository=BASE_REPOSITORY,
            key=key,
            digest=digest,
            registry_address=registry_address,
            seconds=time.monotonic() - began,
            cached=True,
        )
    work = cache_root / "images" / "work"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="base-", dir=work) as directory:
        rootfs = Path(directory) / "rootfs.tar"
        sources = Path(directory) / "sources"
        sources.write_bytes(b"".join(data + b"\n" for _, data in host_sources()))
        _run(
            [
                str(BUILD_TOOLS["mmdebstrap"]),
                f"--variant={VARIANT}",
                "--mode=root",
                "--format=tar",
                # Device nodes are the runtime's business (it mounts /dev), not a layer's.
                "--skip=output/dev",
                *(f"--customize-hook={hook}" for hook in BASE_HOOKS),
                "--include=" + ",".join(BASE_PACKAGES),
                '--aptopt=Acquire::Languages "none"',
                # No documentation, manuals or translations in an image nobody logs into.
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                SUITE,
                str(rootfs),
                # The host's own sources (deb822 or one-line), pasted into the image's apt.
                str(sources),
            ],
            what=f"mmdebstrap {SUITE} ({VARIANT})",
        )
        layer = rootfs.read_bytes()
    digest = push_single_layer(
        registry_address, BASE_REPOSITORY, key, layer=layer, config=base_config(layer)
    )
    _remember(cache_root, BASE_REPOSITORY, key, digest)
    return BuiltImage(
        repository=BASE_REPOSITORY,
        key=key,
        digest=digest,
        registry_address=registry_address,
        seconds=time.monotonic() - began,
        cached=False,
    )


def _build_with_buildah(
    cache_root: Path,
    *,
    repository: str,
    key: str,
    registry_address: str,
    containerfile: Path,
    context: Path,
    build_args: Mapping[str, str],
    volumes: Sequence[tuple[Path, str]] = (),
) -> BuiltImage:
    began = time.monotonic()
    digest = cached_digest(cache_root, registry_address, repository, key)
    cached = digest is not None
    if digest is None:
        tag = f"localhost/{repository}:{key}"
        _run(
            bud_command(
                cache_root,
                containerfile=containerfile,
                context=context,
                tag=tag,
                build_args=build_args,
                volumes=volumes,
            ),
            what=f"buildah bud {repository}",
        )
        digest = _push_built(cache_root, tag, registry_address, repository, key)
        _remember(cache_root, repository, key, digest)
    return BuiltImage(
        repository=repository,
        key=key,
        digest=digest,
        registry_address=registry_address,
        seconds=time.monotonic() - began,
        cached=cached,
    )


def wheelhouse(cache_root: Path) -> Path:
    """Every locked file for this platform, downloaded by the host's pip (hash-checked) once
    per lock; the same directory ``tests/image/test_image_install.py`` fills."""
    root = binaries.repository_root()
    key = hashlib.sha256(b"".join((root / lock).read_bytes() for lock in LOCKS)).hexdigest()
    directory = cache_root / "image-wheels" / key[:16]
    if (directory / ".complete").is_file():
        return directory
    partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    requirements = [argument for lock in LOCKS for argument in ("--requirement", str(root / lock))]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--only-binary=:all:",
            "--no-deps",
            f"--dest={partial}",
            *requirements,
        ],
        what="pip download (the image's locked wheels)",
    )
    (partial / ".complete").touch()
    try:
        partial.rename(directory)
    except OSError:  # another run got there first: use its copy
        shutil.rmtree(partial, ignore_errors=True)
    return directory


def build_hush(cache_root: Path, registry_address: str, base: BuiltImage) -> BuiltImage:
    """Hush's image from the project's Dockerfile, on the base built here."""
    root = binaries.repository_root()
    key = content_key(
        [
            ("base", base.digest.encode()),
            ("buildah", _tool_version("buildah")),
            ("pip.conf", BUILD_PIP_CONF.encode()),
            *tree_parts(root, HUSH_CONTEXT),
        ]
    )
    # A stat when the wheelhouse is complete (the test of the install steps fills it too).
    wheels = wheelhouse(cache_root)
    work = cache_root / "images" / "work"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hush-", dir=work) as directory:
        xdg = Path(directory) / "xdg"
        (xdg / "pip").mkdir(parents=True)
        (xdg / "pip" / "pip.conf").write_text(BUILD_PIP_CONF)
        return _build_with_buildah(
            cache_root,
            repository=HUSH_REPOSITORY,
            key=key,
            registry_address=registry_address,
            containerfile=root / "Dockerfile",
            context=root,
            build_args={"PYTHON_IMAGE": base.reference},
            volumes=((wheels, WHEELS_MOUNT), (xdg, PIP_CONFIG_MOUNT)),
        )


def sample_app_containerfile() -> str:
    return f"""\
# Generated by hush.dev.image_build: the demo's sample app on the Debian base built here.
ARG BASE
FROM ${{BASE}}
COPY sample_app.py serve.py /app/
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app
USER {IMAGE_USER}
EXPOSE {SAMPLE_APP_PORT}
ENTRYPOINT ["python3", "/app/serve.py"]
"""


def build_sample_app(cache_root: Path, registry_address: str, base: BuiltImage) -> BuiltImage:
    source = Path(__file__).with_name("sample_app.py").read_bytes()
    containerfile = sample_app_containerfile()
    key = content_key(
        [
            ("base", base.digest.encode()),
            ("buildah", _tool_version("buildah")),
            ("Containerfile", containerfile.encode()),
            ("sample_app.py", source),
            ("serve.py", SAMPLE_APP_SERVER.encode()),
        ]
    )
    work = cache_root / "images" / "work"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sample-app-", dir=work) as directory:
        context = Path(directory)
        (context / "Containerfile").write_text(containerfile)
        (context / "sample_app.py").write_bytes(source)
        (context / "serve.py").write_text(SAMPLE_APP_SERVER)
        return _build_with_buildah(
            cache_root,
            repository=SAMPLE_APP_REPOSITORY,
            key=key,
            registry_address=registry_address,
            containerfile=context / "Containerfile",
            context=context,
            build_args={"BASE": base.reference},
        )


def ensure_images(cache_root: Path, registry_address: str) -> Images:
    """The three images in the registry at ``registry_address``, built where needed."""
    ensure_tools()
    base = build_base(cache_root, registry_address)
    hush_image = build_hush(cache_root, registry_address, base)
    sample_app = build_sample_app(cache_root, registry_address, base)
    for image in (base, hush_image, sample_app):
        logger.info(
            "Image %s (%s in %.1fs)",
            image.reference,
            "cached" if image.cached else "built",
            image.seconds,
        )
    return Images(base=base, hush=hush_image, sample_app=sample_app)


def ensure_for_cluster(name: str, environ: Mapping[str, str]) -> Images:
    """The images in the registry of cluster ``name`` (up with ``--real-node``)."""
    cluster = layout.layout_for(name, environ)
    address = registry.address(registry.RegistryFiles(cluster=cluster))
    if address is None:
        raise errors.DevClusterError(
            f"Cluster {name} has no registry: run `hush dev up --real-node --name {name}` (a "
            f"cluster made before registries existed needs `hush dev down --name {name}` first)"
        )
    return ensure_images(binaries.cache_root(environ), address)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hush.dev.image_build",
        description="Build the real node's images and push them to the cluster's registry.",
    )
    parser.add_argument("--name", default="hush", help="the cluster (default: hush)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        images = ensure_for_cluster(arguments.name, os.environ)
    except errors.DevClusterError as error:
        print(error, file=sys.stderr)
        return 1
    document = {
        field.name: getattr(images, field.name).to_json() for field in dataclasses.fields(images)
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
