"""The real node's registry and images (hush.dev.registry, hush.dev.image_build), without a
cluster: configs and command lines as built, the registry protocol against an in-process
registry that checks digests, the content-keyed cache, and starting a registry component
(a stand-in binary) through its spec."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hush.dev import containerd_config, errors, image_build, layout, real_node, registry
from hush.dev.components import ComponentSpec

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cluster(tmp_path: Path, name: str = "h7") -> layout.ClusterLayout:
    return layout.layout_for(name, {"HUSH_STATE_DIR": str(tmp_path)})


# -- an in-process registry: the subset of the distribution API the builder uses ---------------


class FakeRegistry:
    """Blobs and manifests in memory; rejects a blob whose bytes do not match its digest."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.uploads: set[str] = set()
        self.requests: list[tuple[str, str]] = []


def _handler(state: FakeRegistry) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_HEAD(self) -> None:
            self.requests_log()
            match = re.fullmatch(r"/v2/(.+)/(blobs|manifests)/([^/?]+)", self.path)
            if not match:
                return self._reply(404)
            repository, kind, reference = match.groups()
            if kind == "blobs":
                return self._reply(200 if reference in state.blobs else 404)
            manifest = state.manifests.get((repository, reference))
            if manifest is None:
                return self._reply(404)
            digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            return self._reply(200, {"Docker-Content-Digest": digest})

        def do_POST(self) -> None:
            self.requests_log()
            self._body()
            match = re.fullmatch(r"/v2/(.+)/blobs/uploads/", self.path)
            if not match:
                return self._reply(404)
            upload = uuid.uuid4().hex
            state.uploads.add(upload)
            return self._reply(
                202, {"Location": f"/v2/{match.group(1)}/blobs/uploads/{upload}?_state=x"}
            )

        def do_PUT(self) -> None:
            self.requests_log()
            body = self._body()
            parsed = urllib.parse.urlsplit(self.path)
            upload = re.fullmatch(r"/v2/(.+)/blobs/uploads/([0-9a-f]+)", parsed.path)
            if upload:
                digest = urllib.parse.parse_qs(parsed.query)["digest"][0]
                if upload.group(2) not in state.uploads:
                    return self._reply(404)
                if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                    return self._reply(400)
                state.blobs[digest] = body
                return self._reply(201)
            manifest = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", parsed.path)
            if not manifest:
                return self._reply(404)
            document = json.loads(body)
            for blob in [document["config"], *document["layers"]]:
                if blob["digest"] not in state.blobs:
                    return self._reply(400)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            state.manifests[(manifest.group(1), manifest.group(2))] = body
            state.manifests[(manifest.group(1), digest)] = body
            return self._reply(201, {"Docker-Content-Digest": digest})

        def requests_log(self) -> None:
            state.requests.append((self.command, self.path))

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    return Handler


@pytest.fixture
def fake_registry() -> Iterator[tuple[str, FakeRegistry]]:
    state = FakeRegistry()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


# -- registry: config, hosts.toml, containerd ----------------------------------------------------


def test_the_registry_listens_on_loopback_only_and_never_proxies_or_deletes(
    tmp_path: Path,
) -> None:
    config = registry.registry_config(port=5001, debug_port=5002, storage=tmp_path)
    http_section = config["http"]
    assert isinstance(http_section, dict)
    assert http_section["addr"] == "127.0.0.1:5001"
    assert http_section["debug"] == {"addr": "127.0.0.1:5002"}
    # A pull-through cache would make the registry fetch from the outside.
    assert "proxy" not in config
    storage = config["storage"]
    assert isinstance(storage, dict)
    assert storage["filesystem"] == {"rootdirectory": str(tmp_path)}
    assert storage["delete"] == {"enabled": False}
    assert "auth" not in config


def test_hosts_toml_lets_containerd_pull_from_our_registry_over_plain_http() -> None:
    document = tomllib.loads(registry.hosts_toml("127.0.0.1:5001"))
    assert document["server"] == "http://127.0.0.1:5001"
    assert document["host"] == {"http://127.0.0.1:5001": {"capabilities": ["pull", "resolve"]}}


def _paths(tmp_path: Path, hosts: Path | None) -> containerd_config.ContainerdPaths:
    return containerd_config.ContainerdPaths(
        root=tmp_path / "root",
        state=tmp_path / "state",
        socket=tmp_path / "state" / "containerd.sock",
        cni_conf_dir=tmp_path / "net.d",
        cni_bin_dir=tmp_path / "cni",
        cni_ipam_dir=tmp_path / "ipam",
        opt_dir=tmp_path / "opt",
        registry_hosts_dir=hosts,
    )


def test_containerd_reads_registry_hosts_only_from_the_clusters_directory(tmp_path: Path) -> None:
    hosts = tmp_path / "certs.d"
    text = containerd_config.containerd_config(
        paths=_paths(tmp_path, hosts), sandbox_image="hush.local/pause:1", metrics_port=1
    )
    document = tomllib.loads(text)
    cri = document["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"] == {"config_path": str(hosts)}
    without = tomllib.loads(
        containerd_config.containerd_config(
            paths=_paths(tmp_path, None), sandbox_image="hush.local/pause:1", metrics_port=1
        )
    )
    assert "registry" not in without["plugins"]["io.containerd.grpc.v1.cri"]


def test_the_node_and_the_registry_agree_on_where_hosts_toml_lives(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    node = real_node.NodeLayout(cluster)
    assert node.containerd.registry_hosts_dir == registry.RegistryFiles(cluster=cluster).hosts_dir
    # Inside the node's own tree: down removes it with the rest.
    assert node.containerd.registry_hosts_dir is not None
    assert node.containerd.registry_hosts_dir.is_relative_to(node.directory)


def test_prepare_writes_config_hosts_and_address_and_a_loopback_health_probe(
    tmp_path: Path,
) -> None:
    cluster = _cluster(tmp_path)
    spec = registry.prepare(cluster, binary=Path("/bin/registry"), cache_root=tmp_path / "cache")
    files = registry.RegistryFiles(cluster=cluster)
    address = registry.address(files)
    assert address == f"127.0.0.1:{spec.port}"
    config = yaml.safe_load(files.config.read_text())
    assert config["http"]["addr"] == address
    assert config["storage"]["filesystem"]["rootdirectory"] == str(
        registry.storage_dir(tmp_path / "cache")
    )
    assert (files.hosts_dir / address / "hosts.toml").read_text() == registry.hosts_toml(address)
    assert spec.name == "registry"
    assert spec.command == ("/bin/registry", "serve", str(files.config))
    debug = config["http"]["debug"]["addr"]
    assert spec.health_url == f"http://{debug}/debug/health"
    assert debug.startswith("127.0.0.1:")
    assert dict(spec.environment)["OTEL_TRACES_EXPORTER"] == "none"


def test_a_registry_component_starts_answers_and_is_found_by_its_pid_file(tmp_path: Path) -> None:
    """The spec runs as the launcher would run it; a stand-in binary serves the two URLs."""
    from hush.dev import health, processes

    stand_in = tmp_path / "registry"
    stand_in.write_text(
        f"#!{sys.executable}\n"
        "import http.server, sys, threading, yaml\n"
        "config = yaml.safe_load(open(sys.argv[2]))\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('Content-Length', '2')\n"
        "        self.end_headers(); self.wfile.write(b'{}')\n"
        "def serve(address):\n"
        "    host, port = address.rsplit(':', 1)\n"
        "    http.server.ThreadingHTTPServer((host, int(port)), H).serve_forever()\n"
        "threading.Thread(target=serve, args=(config['http']['debug']['addr'],)).start()\n"
        "serve(config['http']['addr'])\n"
    )
    stand_in.chmod(0o755)
    cluster = _cluster(tmp_path)
    spec: ComponentSpec = registry.prepare(cluster, binary=stand_in, cache_root=tmp_path / "c")
    started = processes.start(
        spec.command, log_file=cluster.log_file(spec.name), pid_file=cluster.pid_file(spec.name)
    )
    try:
        deadline = time.monotonic() + 20
        while not health.probe(spec.health_url, tls=None).healthy:
            assert started.exit_code() is None, processes.log_tail(cluster.log_file(spec.name))
            assert time.monotonic() < deadline
            time.sleep(0.1)
        address = registry.address(registry.RegistryFiles(cluster=cluster))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{address}/v2/", timeout=5) as response:
            assert response.status == 200
        assert processes.read_pid_file(cluster.pid_file("registry")) == started.record
    finally:
        assert processes.stop_all([started.record]) == []


# -- the registry protocol -----------------------------------------------------------------------


def test_a_pushed_single_layer_image_is_served_by_its_digest(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    address, state = fake_registry
    layer = b"a layer tarball"
    digest = image_build.push_single_layer(
        address, "hush-base", "k1", layer=layer, config=image_build.base_config(layer)
    )
    manifest = json.loads(state.manifests[("hush-base", "k1")])
    assert digest == "sha256:" + hashlib.sha256(state.manifests[("hush-base", "k1")]).hexdigest()
    assert manifest["layers"][0]["digest"] == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert manifest["layers"][0]["size"] == len(layer)
    config = json.loads(state.blobs[manifest["config"]["digest"]])
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    assert registry.manifest_digest(address, "hush-base", digest) == digest
    assert registry.manifest_digest(address, "hush-base", "k1") == digest
    assert registry.manifest_digest(address, "hush-base", "absent") is None


def test_a_blob_the_registry_has_is_not_uploaded_again(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    address, state = fake_registry
    image_build.push_blob(address, "r", b"same bytes")
    posts = [request for request in state.requests if request[0] == "POST"]
    image_build.push_blob(address, "r", b"same bytes")
    assert [request for request in state.requests if request[0] == "POST"] == posts
    assert len(posts) == 1


def test_a_refused_blob_is_an_error(
    fake_registry: tuple[str, FakeRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, _ = fake_registry
    # A digest that does not match the bytes: the registry answers 400.
    monkeypatch.setattr(image_build, "_digest", lambda data: "sha256:" + "0" * 64)
    with pytest.raises(errors.DevClusterError, match="refused blob"):
        image_build.push_blob(address, "r", b"bytes")


def test_the_cache_answers_only_for_a_digest_the_registry_still_serves(
    tmp_path: Path, fake_registry: tuple[str, FakeRegistry]
) -> None:
    address, state = fake_registry
    assert image_build.cached_digest(tmp_path, address, "hush", "k") is None
    layer = b"layer"
    digest = image_build.push_single_layer(
        address, "hush", "k", layer=layer, config=image_build.base_config(layer)
    )
    image_build._remember(tmp_path, "hush", "k", digest)
    assert image_build.cached_digest(tmp_path, address, "hush", "k") == digest
    # Another key (changed inputs) is not the cached image.
    assert image_build.cached_digest(tmp_path, address, "hush", "other") is None
    # A registry that lost the image: build again.
    state.manifests.clear()
    assert image_build.cached_digest(tmp_path, address, "hush", "k") is None


# -- content keys ---------------------------------------------------------------------------------


def test_content_keys_change_with_names_bytes_and_the_executable_bit(tmp_path: Path) -> None:
    assert image_build.content_key([("a", b"1")]) == image_build.content_key([("a", b"1")])
    assert image_build.content_key([("a", b"1")]) != image_build.content_key([("b", b"1")])
    assert image_build.content_key([("a", b"1")]) != image_build.content_key([("a", b"2")])
    # Boundaries count: ("ab", "") is not ("a", "b").
    assert image_build.content_key([("ab", b"")]) != image_build.content_key([("a", b"b")])
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "pkg" / "n.pyc").write_bytes(b"junk")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    parts = image_build.tree_parts(tmp_path, ["pkg", "run.sh"])
    assert [name for name, _ in parts] == ["pkg/m.py:-", "run.sh:-"]
    before = image_build.content_key(parts)
    (tmp_path / "run.sh").chmod(0o755)
    assert image_build.content_key(image_build.tree_parts(tmp_path, ["pkg", "run.sh"])) != before
    (tmp_path / "run.sh").chmod(0o644)
    assert image_build.content_key(image_build.tree_parts(tmp_path, ["pkg", "run.sh"])) == before


def test_the_hush_key_covers_exactly_the_build_context_dockerignore_allows() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert set(image_build.HUSH_CONTEXT) == allowed | {"Dockerfile", ".dockerignore"}
    assert set(image_build.LOCKS) <= allowed


# -- commands and generated files ----------------------------------------------------------------


def test_bud_runs_without_network_in_runc_with_storage_under_the_cache(tmp_path: Path) -> None:
    command = image_build.bud_command(
        tmp_path,
        containerfile=tmp_path / "Dockerfile",
        context=tmp_path,
        tag="localhost/hush:k",
        build_args={"PYTHON_IMAGE": "127.0.0.1:5001/hush-base@sha256:" + "a" * 64},
        volumes=((tmp_path / "wheels", "/wheels"),),
    )
    assert command[0] == "/usr/bin/buildah"
    assert f"--root={tmp_path / 'images' / 'buildah' / 'root'}" in command
    assert "--cgroup-manager=cgroupfs" in command
    assert command[command.index("bud") + 1 :].count("--network=none") == 1
    assert "--isolation=oci" in command
    assert "--force-rm" in command  # no working container left mounted after a failure
    assert "--tls-verify=false" in command
    assert f"--build-arg=PYTHON_IMAGE=127.0.0.1:5001/hush-base@sha256:{'a' * 64}" in command
    assert f"--volume={tmp_path / 'wheels'}:/wheels:ro" in command
    assert command[-1] == str(tmp_path)


def test_the_build_pip_conf_reads_only_the_wheelhouse() -> None:
    import configparser

    parser = configparser.ConfigParser()
    parser.read_string(image_build.BUILD_PIP_CONF)
    assert parser["global"]["no-index"] == "true"
    assert parser["global"]["find-links"] == image_build.WHEELS_MOUNT


def test_the_dockerfile_base_is_an_arg_defaulting_to_the_pinned_public_image() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert default is not None
    assert re.fullmatch(r"python:[\w.-]+@sha256:[0-9a-f]{64}", default.group(1))
    assert dockerfile.count("FROM ${PYTHON_IMAGE}") == 2


def test_the_sample_app_image_runs_as_65532_and_its_server_serves(tmp_path: Path) -> None:
    containerfile = image_build.sample_app_containerfile()
    assert "USER 65532:65532" in containerfile
    assert 'ENTRYPOINT ["python3", "/app/serve.py"]' in containerfile
    assert "FROM ${BASE}" in containerfile
    # The server script, with the sample app beside it as in the image, on a free port.
    (tmp_path / "sample_app.py").write_bytes(
        (REPO_ROOT / "operator" / "hush" / "dev" / "sample_app.py").read_bytes()
    )
    port_free = _free_port()
    (tmp_path / "serve.py").write_text(
        image_build.SAMPLE_APP_SERVER.replace('"0.0.0.0", 8080', f'"127.0.0.1", {port_free}')
    )
    assert '"0.0.0.0", 8080' in image_build.SAMPLE_APP_SERVER
    server = subprocess.Popen([sys.executable, str(tmp_path / "serve.py")], cwd=tmp_path)
    try:
        body = _get_when_up(f"http://127.0.0.1:{port_free}/count")
        assert json.loads(body) == {"count": 2000}
        server.terminate()
        assert server.wait(timeout=10) == 0  # SIGTERM is handled: a clean exit
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get_when_up(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 20
    while True:
        try:
            with opener.open(url, timeout=5) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_base_key_follows_the_host_sources_and_the_package_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://deb.debian.org/debian\n")
    monkeypatch.setattr(image_build, "HOST_SOURCES", (tmp_path,))
    monkeypatch.setattr(image_build, "_tool_version", lambda tool: b"mmdebstrap 1.3.5")
    first = image_build.base_key()
    assert image_build.host_sources() == [(str(sources), sources.read_bytes())]
    sources.write_text("Types: deb\nURIs: http://snapshot.debian.org/archive/debian/1\n")
    second = image_build.base_key()
    assert second != first
    monkeypatch.setattr(image_build, "BASE_PACKAGES", (*image_build.BASE_PACKAGES, "curl"))
    assert image_build.base_key() != second


def test_building_for_a_cluster_without_a_registry_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(errors.DevClusterError, match=r"up --real-node --name h7"):
        image_build.ensure_for_cluster("h7", {"HUSH_STATE_DIR": str(tmp_path)})


def test_the_registry_module_is_pinned_and_stays_out_of_build_sh_cache_key() -> None:
    controlplane = REPO_ROOT / "hack" / "controlplane"
    # build.sh hashes "$here"/*/go.mod and go.sum: a go.mod one level down would change that
    # key and rebuild (hence recreate) every existing control plane.
    assert '"$here"/*/go.mod' in (controlplane / "build.sh").read_text()
    assert not list(controlplane.glob("registry/go.*"))
    module = controlplane / "registry" / "distribution"
    pinned = re.search(
        r"github\.com/distribution/distribution/v3 (v3\.\d+\.\d+)", (module / "go.mod").read_text()
    )
    assert pinned is not None
    checksums = (module / "go.sum").read_text()
    assert f"github.com/distribution/distribution/v3 {pinned.group(1)} h1:" in checksums
    script = (controlplane / "build-registry.sh").read_text()
    assert "nice -n 19 go build" in script
    assert "github.com/distribution/distribution/v3/cmd/registry" in script
