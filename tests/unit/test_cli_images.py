"""``hush images pin`` against a local OCI-distribution registry stub (loopback only).

The stub answers ``HEAD /v2/<name>/manifests/<tag>`` with a ``Docker-Content-Digest`` and,
like Docker Hub, first demands a Bearer token from its own token endpoint: the whole path
from a tag in Git to a pinned manifest, without the network.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http import server
from pathlib import Path
from typing import Any

import pytest

from hush.cli import images
from hush.cli import main as cli_main

DIGESTS = {("team/api", "1.4.2"): "sha256:" + "1" * 64, ("team/worker", "2"): "sha256:" + "2" * 64}
TOKEN = "pull-token"


class _Registry(server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the token endpoint
        if self.path.startswith("/token?"):
            body = json.dumps({"token": TOKEN}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(404)
        self.end_headers()

    def do_HEAD(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            host = self.headers["Host"]
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate",
                f'Bearer realm="http://{host}/token",service="stub",scope="repository:x:pull"',
            )
            self.end_headers()
            return
        name, _, tag = self.path.removeprefix("/v2/").partition("/manifests/")
        digest = DIGESTS.get((name, tag))
        self.send_response(200 if digest else 404)
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  template:
    spec:
      initContainers:
        - name: migrate
          image: {registry}/team/worker:2  # run first
      containers:
        - name: api
          image: "{registry}/team/api:1.4.2"
        - name: pinned
          image: {registry}/team/api:1.4.2@sha256:{old}
"""


def test_tags_in_git_become_pinned_references_and_the_rest_is_untouched(
    registry: str, tmp_path: Path
) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(MANIFEST.format(registry=registry, old="9" * 64))
    arguments = ["images", "pin", str(path), "--plain-http", registry]
    assert cli_main.main([*arguments, "--check"]) == 1
    assert cli_main.main(arguments) == 0
    expected = MANIFEST.format(registry=registry, old="9" * 64)
    expected = expected.replace(
        f"{registry}/team/worker:2  #",
        f"{registry}/team/worker:2@{DIGESTS[('team/worker', '2')]}  #",
    ).replace(
        f'"{registry}/team/api:1.4.2"',
        f'"{registry}/team/api:1.4.2@{DIGESTS[("team/api", "1.4.2")]}"',
    )
    assert path.read_text() == expected
    assert cli_main.main([*arguments, "--check"]) == 0


def test_an_unknown_tag_is_an_error_that_changes_nothing(registry: str, tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    original = MANIFEST.format(registry=registry, old="9" * 64).replace("worker:2", "worker:3")
    path.write_text(original)
    assert cli_main.main(["images", "pin", str(path), "--plain-http", registry]) == 2
    assert path.read_text() == original


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("nginx", (images.DOCKER_HUB, "library/nginx", "latest", None)),
        ("nginx:1.27", (images.DOCKER_HUB, "library/nginx", "1.27", None)),
        ("team/api:2", (images.DOCKER_HUB, "team/api", "2", None)),
        ("ghcr.io/org/app:v1", ("ghcr.io", "org/app", "v1", None)),
        ("localhost:5000/app", ("localhost:5000", "app", "latest", None)),
        (
            "ghcr.io/org/app:v1@sha256:" + "a" * 64,
            ("ghcr.io", "org/app", "v1", "sha256:" + "a" * 64),
        ),
    ],
)
def test_references_are_split_with_dockers_defaults(
    reference: str, expected: tuple[str, str, str, str | None]
) -> None:
    assert images.split_reference(reference) == expected
