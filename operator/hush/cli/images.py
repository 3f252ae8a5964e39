"""``hush images pin``: rewrite tag-only image references in manifests to tag@digest.

The CI half of digest pinning (docs/gitops.md): Git keeps readable tags, CI resolves each
tag to the digest the registry serves now and writes ``repository:tag@sha256:...`` back,
and the pinned manifest is what gets applied. Namespaces enforced by Hush refuse tag-only
images for ``confidential`` and ``restricted`` workloads.

Resolution speaks the OCI distribution API: ``HEAD /v2/<name>/manifests/<tag>`` with the
manifest media types accepted, reading ``Docker-Content-Digest``; a ``401`` with a
``Bearer`` challenge is answered by fetching an anonymous (or ``--token``) pull token from
the realm it names, as ``docker pull`` does. Files are edited textually (only the image
strings change, comments and layout stay); ``--check`` only reports, exiting 1 when some
reference is not pinned.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')
DOCKER_HUB = "registry-1.docker.io"


class ResolveError(Exception):
    """A tag could not be resolved; the message names the reference and why."""


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "images", help="Pin container images by digest in manifests (for CI)."
    )
    actions = parser.add_subparsers(dest="images_command", required=True)
    pin = actions.add_parser("pin", help="Rewrite tag-only images to tag@sha256:digest.")
    pin.add_argument("files", nargs="+", type=Path, help="YAML manifests to rewrite in place.")
    pin.add_argument("--check", action="store_true", help="Only report; exit 1 if unpinned.")
    pin.add_argument("--token", default=None, help="Bearer token for private registries.")
    pin.add_argument(
        "--plain-http",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="Registries spoken to over plain HTTP (local test registries only).",
    )
    pin.set_defaults(handler=run)


def split_reference(reference: str) -> tuple[str, str, str, str | None]:
    """(registry, repository, tag, digest) of an image reference, with Docker's defaults."""
    rest, _, digest = reference.partition("@")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    name, _, tag = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    if registry == DOCKER_HUB and "/" not in name:
        name = f"library/{name}"
    return registry, name, tag or "latest", digest or None


def image_references(document: object) -> Iterator[str]:
    """Every ``image`` of a container in a manifest (any kind, any nesting)."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("containers", "initContainers", "ephemeralContainers") and isinstance(
                value, list
            ):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        yield container["image"]
            yield from image_references(value)
    elif isinstance(document, list):
        for item in document:
            yield from image_references(item)


def _bearer_token(challenge: str, opener: Callable[..., Any]) -> str:
    parameters = dict(_CHALLENGE_PARAMETER.findall(challenge))
    realm = parameters.pop("realm", None)
    if not realm:
        raise ResolveError(f"the registry's challenge names no token realm: {challenge}")
    with opener(realm + "?" + urllib.parse.urlencode(parameters), timeout=30) as reply:
        answer = json.loads(reply.read())
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str):
        raise ResolveError("the token endpoint answered without a token")
    return token


def resolve(
    reference: str,
    *,
    token: str | None = None,
    plain_http: frozenset[str] = frozenset(),
    opener: Callable[..., Any] = urllib.request.urlopen,
) -> str:
    """The digest (``sha256:...``) that ``reference``'s tag points at now."""
    registry, name, tag, _ = split_reference(reference)
    scheme = "http" if registry in plain_http else "https"
    url = f"{scheme}://{registry}/v2/{name}/manifests/{urllib.parse.quote(tag)}"
    headers = {"Accept": MANIFEST_TYPES}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    digest: str = ""
    for _attempt in range(2):
        request = urllib.request.Request(url, method="HEAD", headers=headers)  # noqa: S310
        try:
            with opener(request, timeout=30) as reply:
                digest = reply.headers.get("Docker-Content-Digest", "")
        except urllib.error.HTTPError as error:
            challenge = error.headers.get("WWW-Authenticate", "")
            if (
                error.code == 401
                and challenge.startswith("Bearer")
                and "Authorization" not in headers
            ):
                headers["Authorization"] = f"Bearer {_bearer_token(challenge, opener)}"
                continue
            raise ResolveError(f"{reference}: the registry answered {error.code}") from None
        except OSError as error:
            raise ResolveError(f"{reference}: cannot reach {registry}: {error}") from None
        if not DIGEST.match(digest):
            raise ResolveError(f"{reference}: the registry sent no sha256 Docker-Content-Digest")
        return digest
    raise ResolveError(f"{reference}: not authorised (give --token)")


def pinned(reference: str, digest: str) -> str:
    return f"{reference}@{digest}"


def run(arguments: argparse.Namespace) -> int:
    plain_http = frozenset(arguments.plain_http)
    unpinned_total = 0
    for path in arguments.files:
        text = path.read_text()
        references = sorted(
            {
                reference
                for document in yaml.safe_load_all(text)
                for reference in image_references(document)
                if "@" not in reference
            }
        )
        unpinned_total += len(references)
        if arguments.check:
            for reference in references:
                print(f"{path}: {reference} is not pinned by digest")
            continue
        for reference in references:
            try:
                digest = resolve(reference, token=arguments.token, plain_http=plain_http)
            except ResolveError as error:
                print(f"hush images pin: {error}", file=sys.stderr)
                return 2
            # Only whole image values: the reference followed by the end of the value.
            pattern = re.compile(
                r"(image:\s*[\"']?)" + re.escape(reference) + r"(?=[\"']?\s*(#.*)?$)", re.MULTILINE
            )
            text = pattern.sub(r"\g<1>" + pinned(reference, digest).replace("\\", "\\\\"), text)
            print(f"{path}: {reference} -> {pinned(reference, digest)}")
        path.write_text(text)
    if arguments.check and unpinned_total:
        return 1
    return 0
