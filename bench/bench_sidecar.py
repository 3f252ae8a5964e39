"""Benchmark the noise sidecar against nginx on one core: added latency and requests/s.

Usage: .venv/bin/python bench/bench_sidecar.py [--duration 10] [--rate 500] [--profile]
(part of `make bench`, about 5 minutes; needs no cluster). The last line is one JSON object.

Set-up, all on loopback:

- the application: Debian's nginx serving a small static JSON answer (a count, a bounded
  sum and an 8-bin histogram, 153 bytes), so that the upstream is never the slow part;
- the reference proxy: Debian's nginx (one process) with ``proxy_pass`` to it over
  keep-alive upstream connections, with an access log, as a production proxy runs;
- the sidecar: ``hush sidecar`` with the command, args and baked environment that
  ``build_sidecar_container`` produces, for a policy covering the answer's three fields
  (Laplace, one charge per answer). Every request carries a distinct query string, so the
  no-averaging cache never answers and every answer is noised and charged: the benchmark
  checks the sidecar's metrics and the accountant's counts against the load generator's
  request count. A separate row measures cache hits (one repeated query). When the policy
  has ``releaseDeadline`` (the noising step padded to a fixed time), the sidecar rows are
  measured twice, at the default deadline and with padding off (``0s``), on two routes of
  one policy;
- the accountant: ``bench/accountant_stub.py``, which speaks the real protocol over HTTPS
  and answers at once (see its docstring; the real accountant's throughput is measured by
  bench/bench_accountant.py against an apiserver).

The proxy under test (nginx or the sidecar) runs alone on CPU 0 (``taskset``); the upstream
nginx, the accountant stub and the load generator share CPU 1. Throughput rows use wrk
(closed loop: 16 connections, each sending as soon as it is answered); "per core" divides a
row's rate by the CPU share its proxy used, i.e. what one full core of it would serve, which
is the fair reference when the load generator's core, not nginx, is the limit. Latency rows
use ``hush-fixed-rate`` (bench/fixedrate: open loop at a fixed rate; Debian has no wrk2);
its achieved rate, its lag behind schedule and its CPU share are printed, to show it kept up.
Added latency is a percentile through a proxy minus the same percentile of calling the
upstream directly in the same run. When the sidecar cannot sustain the target rate, its
latency there is queueing, so the rows are repeated at a quarter of the sidecar's throughput.

Rows are only comparable within one run. The machine is shared, so each row also reports
how much of each core processes outside the benchmark used and flags rows where that, or the
generator's lag, exceeds a few per cent (DISTURBED); the load average is printed too. Two
runs of this benchmark on one machine wait for each other (a lock in ~/.cache/hush).

The tools come from hack/bench-tools.sh (Debian packages unpacked without root, cached in
~/.cache/hush). ``--profile`` instead samples the sidecar with py-spy under the noised load
and prints where its CPU time goes per request.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import resource
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tools as tools_cache
from prometheus_client import parser as metrics_parser

from hush.api import dppolicy
from hush.dev import pki
from hush.injection import sidecar as injection
from hush.reconcile import dppolicy as policy_reconcile

REPOSITORY = Path(__file__).resolve().parents[1]
PROXY_CPU = "0"  # the proxy under test, alone
LOAD_CPU = "1"  # upstream nginx, accountant stub, load generator
ROUTE = "/stats"
UNPADDED_ROUTE = "/stats-unpadded"  # the same route with releaseDeadline 0s
POLICY_NAME = "bench-stats"
SIDECAR_IMAGE = "registry.invalid/hush:bench"  # part of the policy hash; never pulled here
PROXY_CPU_PROCESSES = (
    "nginx_proxy",
    "aiohttp_proxy",
    "sidecar",
)  # the processes pinned to PROXY_CPU
LOAD_CPU_PROCESSES = ("nginx_upstream", "accountant_stub")  # and to LOAD_CPU, with the load
# Others' share of a core above which a row is flagged. This machine's idle background (the
# local clusters other work keeps running) is 5-10 % per core.
DISTURBED_SHARE = 0.15
LAGGED_MS = 5.0  # the fixed-rate generator's p99 lag behind schedule (timer slack is ~1 ms)
WARMUP_SECONDS = 2
SATURATED_P50_MS = 250.0  # a proxy that keeps up answers in milliseconds, not this

# The application's answer: small, and every number in it is covered by the policy.
ANSWER: dict[str, Any] = {
    "count": 1234,
    "sum": 5678.5,
    "histogram": {
        "0-9": 101,
        "10-19": 154,
        "20-29": 187,
        "30-39": 176,
        "40-49": 168,
        "50-59": 162,
        "60-69": 149,
        "70+": 137,
    },
}

TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
TARGET_THROUGHPUT_RATIO = 0.25


def default_release_deadline() -> str | None:
    """The policy's default releaseDeadline, or None if this version has no padding."""
    field = dppolicy.Route.model_fields.get("release_deadline")
    return None if field is None else str(field.default)


def policy_spec(upstream_port: int) -> dict[str, Any]:
    """The DPPolicy spec the sidecar enforces: the answer's three fields, one charge each answer."""
    route: dict[str, Any] = {
        "path": ROUTE,
        "mechanism": "laplace",
        "epsilon": 0.5,
        "minCohort": 10,
        "cacheTTL": "5m",
        "fields": [
            {
                "path": "$.count",
                "kind": "count",
                "postProcess": {"clampNonNegative": True, "round": True},
            },
            {"path": "$.sum", "kind": "sum", "bounds": {"lower": 0, "upper": 100}},
            {
                "path": "$.histogram.*",
                "kind": "histogram",
                "postProcess": {"clampNonNegative": True, "round": True},
            },
        ],
        # The released shape is declared (docs/design/0018): the answer's eight bins.
        "domains": [{"path": "$.histogram.*", "keys": list(ANSWER["histogram"])}],
        # Every request carries ?r=<distinct tag> (no cache hits); undeclared ones are refused.
        "queryParameters": [{"name": "r"}],
    }
    routes = [route]
    if default_release_deadline() is not None:
        routes.append({**route, "path": UNPADDED_ROUTE, "releaseDeadline": "0s"})
    return {
        "budgetRef": {"name": "bench", "team": "analytics"},
        "upstream": {"port": upstream_port},
        "routes": routes,
    }


# -- tools and processes ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tools:
    nginx: Path
    wrk: Path
    fixed_rate: Path


def tools() -> Tools:
    """The benchmark tools, fetched or built (cached) by hack/bench-tools.sh."""
    bin_dir = tools_cache.bin_dir()
    return Tools(bin_dir / "nginx", bin_dir / "wrk", bin_dir / "hush-fixed-rate")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pinned(cpu: str, *command: str | Path) -> list[str]:
    return ["taskset", "-c", cpu, *(str(part) for part in command)]


class Processes:
    """Starts the benchmark's own processes and stops exactly those (by pid) at the end."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._running: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, command: list[str], *, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with (self._workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self._workdir
            )
        self._running.append(process)
        return process

    def check_alive(self, name: str, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            log = (self._workdir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log}")

    def stop_all(self) -> None:
        for process in reversed(self._running):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self._running):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._running.clear()


def wait_until(check: Callable[[], bool], *, description: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"Timed out after {timeout:.0f} s waiting for {description}")


def http_get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as reply:  # noqa: S310
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def start_until_answering(
    processes: Processes,
    name: str,
    command: list[str],
    url: str,
    *,
    env: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> subprocess.Popen[bytes]:
    process = processes.start(name, command, env=env)

    def answering() -> bool:
        processes.check_alive(name, process)
        return http_get(url, context)[0] == 200

    wait_until(answering, description=f"{name} to answer {url}")
    return process


NGINX_COMMON = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  client_body_temp_path {dir}/{name}-tmp/body;
  proxy_temp_path {dir}/{name}-tmp/proxy;
  fastcgi_temp_path {dir}/{name}-tmp/fastcgi;
  uwsgi_temp_path {dir}/{name}-tmp/uwsgi;
  scgi_temp_path {dir}/{name}-tmp/scgi;
  keepalive_requests 1000000;
  {body}
}}
"""

UPSTREAM_BODY = """
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location / {{ root {dir}/www; default_type application/json; }}
  }}
"""

PROXY_BODY = """
  access_log {dir}/nginx-proxy-access.log;
  upstream application {{
    server 127.0.0.1:{upstream_port};
    keepalive 32;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://application;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
"""


def start_nginx(
    processes: Processes, nginx: Path, workdir: Path, name: str, cpu: str, body: str, port: int
) -> subprocess.Popen[bytes]:
    """One nginx process, not daemonised, with every path it writes in ``workdir``."""
    (workdir / f"{name}-tmp").mkdir(exist_ok=True)
    conf = workdir / f"{name}.conf"
    conf.write_text(NGINX_COMMON.format(dir=workdir, name=name, body=body))
    command = pinned(cpu, nginx, "-p", workdir, "-c", conf, "-e", workdir / f"{name}-error.log")
    return start_until_answering(processes, name, command, f"http://127.0.0.1:{port}{ROUTE}")


# -- measurement helpers ------------------------------------------------------------------


def cpu_jiffies() -> dict[str, tuple[int, int]]:
    """Per CPU: (busy, total) clock ticks since boot, from /proc/stat."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(value) for value in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            result[name.removeprefix("cpu")] = (sum(ticks) - idle, sum(ticks))
    return result


@contextlib.contextmanager
def cpu_usage(pids: dict[str, int], into: dict[str, float]) -> Iterator[None]:
    """Fill ``into`` with each CPU's busy share, each named process's CPU share, the load
    generator's (the children that ended inside the block) and what others used per core."""
    cpus_before = cpu_jiffies()
    processes_before = {name: tools_cache.process_cpu_seconds(pid) for name, pid in pids.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    cpus_after = cpu_jiffies()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for cpu in (PROXY_CPU, LOAD_CPU):
        busy = cpus_after[cpu][0] - cpus_before[cpu][0]
        total = cpus_after[cpu][1] - cpus_before[cpu][1]
        into[f"cpu{cpu}_busy"] = busy / total if total else 0.0
    for name, pid in pids.items():
        spent = tools_cache.process_cpu_seconds(pid) - processes_before[name]
        into[f"{name}_cpu"] = spent / elapsed
    into["load_generator_cpu"] = (
        children_after.ru_utime + children_after.ru_stime
        - children_before.ru_utime - children_before.ru_stime
    ) / elapsed  # fmt: skip
    # What else ran on each core: other people's processes (and interrupts). More than a
    # few per cent and the row measured a shared core.
    for core, cpu, names in (
        ("proxy_core", PROXY_CPU, PROXY_CPU_PROCESSES),
        ("load_core", LOAD_CPU, (*LOAD_CPU_PROCESSES, "load_generator")),
    ):
        ours = sum(into.get(f"{name}_cpu", 0.0) for name in names)
        into[f"{core}_others"] = max(0.0, into[f"cpu{cpu}_busy"] - ours)


WRK_REPORT = r"""
-- Written by bench/bench_sidecar.py: print wrk's summary as one JSON line.
function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

WRK_DISTINCT = """
-- Written by bench/bench_sidecar.py: a distinct query string per request, so that the
-- sidecar's no-averaging cache never answers. The tag (wrk's first script argument) is
-- new for every wrk run.
counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end
function init(args)
  tag = args[1] .. "t" .. thread_number .. "-"
end
function request()
  counter = counter + 1
  return wrk.format("GET", wrk.path .. "?r=" .. tag .. counter)
end
"""


def wrk_scripts(workdir: Path) -> tuple[Path, Path]:
    """(a distinct query string per request, a fixed request), both reporting JSON.

    Without a per-request Lua function wrk formats its request once, which leaves more of the
    load generator's core to the rows that do not need distinct queries (direct, nginx, cache
    hits): the reference is measured as fast as this set-up allows."""
    distinct = workdir / "distinct.lua"
    distinct.write_text(WRK_DISTINCT + WRK_REPORT)
    fixed = workdir / "fixed.lua"
    fixed.write_text(WRK_REPORT)
    return distinct, fixed


def run_wrk(
    wrk: Path, url: str, script: Path, *, connections: int, seconds: float
) -> dict[str, Any]:
    options = [
        "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "5s", "-s", str(script),
    ]  # fmt: skip
    completed = subprocess.run(
        pinned(LOAD_CPU, wrk, *options, url, "--", secrets.token_hex(4)),
        check=True,
        capture_output=True,
        text=True,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
            errors = sum(
                result[key]
                for key in ("connect_errors", "read_errors", "write_errors", "status_errors")
            )
            if errors or result["timeouts"]:
                raise RuntimeError(f"wrk saw errors against {url}: {result}")
            result["requests_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk printed no summary:\n{completed.stdout}\n{completed.stderr}")


def run_fixed_rate(
    fixed_rate: Path, url: str, *, rate: float, seconds: float, tag: str
) -> dict[str, Any]:
    options = [
        "-url", url, "-rate", str(rate), "-duration", f"{round(seconds)}s",
        "-warmup", f"{WARMUP_SECONDS}s", "-query-prefix", f"{tag}-",
    ]  # fmt: skip
    completed = subprocess.run(
        pinned(LOAD_CPU, fixed_rate, *options),
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


class SidecarProbe:
    """Reads the sidecar's metrics and the stub's counts, to check what was charged."""

    def __init__(self, admin_url: str, stub_url: str, stub_context: ssl.SSLContext) -> None:
        self._admin_url = admin_url
        self._stub_url = stub_url
        self._stub_context = stub_context

    def counts(self) -> dict[str, float]:
        status, body = http_get(f"{self._admin_url}/metrics")
        if status != 200:
            raise RuntimeError(f"The sidecar's /metrics answered {status}")
        counts = {"released": 0.0, "cache-hit": 0.0, "other": 0.0}
        for family in metrics_parser.text_string_to_metric_families(body.decode()):
            if family.name != "hush_sidecar_requests":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels.get("outcome", "")
                    counts[outcome if outcome in counts else "other"] += sample.value
        status, body = http_get(f"{self._stub_url}/stats", self._stub_context)
        if status != 200:
            raise RuntimeError(f"The accountant stub's /stats answered {status}")
        for name, value in json.loads(body).items():
            counts[f"stub_{name}"] = float(value)
        return counts


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def check_charged(counted: dict[str, float], requests: int, in_flight: int) -> None:
    """Every request the load generator counted was charged and released."""
    released = counted["released"]
    problems = []
    if counted["cache-hit"] or counted["other"]:
        problems.append(f"{counted['cache-hit'] + counted['other']:.0f} hits or refusals")
    if not requests <= released <= requests + in_flight:
        problems.append(f"{released:.0f} released for {requests} requests")
    if counted["stub_charge"] != released:
        problems.append(f"{counted['stub_charge']:.0f} charged for {released:.0f} released")
    if problems:
        raise RuntimeError(f"Not every answer was noised and charged: {'; '.join(problems)}")


# -- the set-up ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    key: str
    label: str
    url: str
    proxy: str | None  # the name of the proxy process (for its CPU share)


@dataclasses.dataclass
class Setup:
    tools: Tools
    workdir: Path
    direct: Target
    nginx: Target
    aiohttp: Target  # the sidecar's HTTP stack alone: its ceiling
    sidecars: list[Target]  # the default deadline first, then padding off (if configurable)
    pids: dict[str, int]
    probe: SidecarProbe


def sidecar_command(
    *,
    upstream_port: int,
    listen_port: int,
    admin_port: int,
    accountant_url: str,
    ca_path: Path,
    token_path: Path,
) -> tuple[list[str], dict[str, str]]:
    """The injector's container (command and env), with the host's token, CA and address."""
    spec = dppolicy.DPPolicySpec.model_validate(policy_spec(upstream_port))
    container = injection.build_sidecar_container(
        policy_name=POLICY_NAME,
        policy_spec=spec.model_dump(mode="json", by_alias=True),
        policy_hash=policy_reconcile.policy_hash(spec, SIDECAR_IMAGE),
        image=SIDECAR_IMAGE,
        accountant_url=accountant_url,
        upstream_port=upstream_port,
        listen_port=listen_port,
        admin_port=admin_port,
    )
    environment = dict(os.environ)
    for variable in container["env"]:
        environment[variable["name"]] = variable["value"]
    # As in e2e/test_sidecar.py, the only host substitutions: token file, CA, loopback address.
    baked = json.loads(environment["HUSH_SIDECAR_CONFIG"])
    baked.update(tokenPath=str(token_path), caPath=str(ca_path), listenHost="127.0.0.1")
    environment["HUSH_SIDECAR_CONFIG"] = json.dumps(baked)
    command = [sys.executable, "-m", "hush", *container["command"][1:], *container["args"]]
    return command, environment


@contextlib.contextmanager
def running_setup(workdir: Path) -> Iterator[Setup]:
    bench_tools = tools()
    processes = Processes(workdir)
    try:
        (workdir / "www").mkdir(exist_ok=True)
        for route in (ROUTE, UNPADDED_ROUTE):
            (workdir / "www" / route.strip("/")).write_text(json.dumps(ANSWER))

        upstream_port = free_port()
        upstream = start_nginx(
            processes, bench_tools.nginx, workdir, "nginx-upstream", LOAD_CPU,
            UPSTREAM_BODY.format(port=upstream_port, dir=workdir), upstream_port,
        )  # fmt: skip
        proxy_port = free_port()
        proxy = start_nginx(
            processes, bench_tools.nginx, workdir, "nginx-proxy", PROXY_CPU,
            PROXY_BODY.format(port=proxy_port, upstream_port=upstream_port, dir=workdir),
            proxy_port,
        )  # fmt: skip

        bare_port = free_port()
        bare = start_until_answering(
            processes,
            "aiohttp-proxy",
            pinned(
                PROXY_CPU, sys.executable, REPOSITORY / "bench" / "aiohttp_proxy.py",
                "--port", str(bare_port), "--upstream", f"http://127.0.0.1:{upstream_port}",
            ),
            f"http://127.0.0.1:{bare_port}{ROUTE}",
        )  # fmt: skip

        cert, key = workdir / "stub-tls.crt", workdir / "stub-tls.key"
        pki.write_loopback_serving_files(
            cert, key, common_name="hush-accountant", now=datetime.datetime.now(datetime.UTC)
        )
        token = workdir / "token"
        token.write_text(secrets.token_urlsafe(32))
        stub_port = free_port()
        stub_url = f"https://127.0.0.1:{stub_port}"
        stub_context = ssl.create_default_context(cafile=str(cert))
        stub_options = [
            "--port", str(stub_port), "--cert", str(cert), "--key", str(key),
            "--token-file", str(token),
        ]  # fmt: skip
        stub = start_until_answering(
            processes,
            "accountant-stub",
            pinned(
                LOAD_CPU, sys.executable, REPOSITORY / "bench" / "accountant_stub.py", *stub_options
            ),
            f"{stub_url}/healthz",
            context=stub_context,
        )

        listen_port, admin_port = free_port(), free_port()
        command, environment = sidecar_command(
            upstream_port=upstream_port,
            listen_port=listen_port,
            admin_port=admin_port,
            accountant_url=stub_url,
            ca_path=cert,
            token_path=token,
        )
        admin_url = f"http://127.0.0.1:{admin_port}"
        sidecar = start_until_answering(
            processes, "sidecar", pinned(PROXY_CPU, *command), f"{admin_url}/readyz",
            env=environment,
        )  # fmt: skip
        deadline = default_release_deadline()
        sidecars = [
            Target(
                "sidecar",
                "sidecar" if deadline is None else f"sidecar, releaseDeadline {deadline}",
                f"http://127.0.0.1:{listen_port}{ROUTE}",
                "sidecar",
            )
        ]
        if deadline is not None:
            sidecars.append(
                Target(
                    "sidecar_unpadded",
                    "sidecar, releaseDeadline 0s",
                    f"http://127.0.0.1:{listen_port}{UNPADDED_ROUTE}",
                    "sidecar",
                )
            )
        for target in sidecars:
            status, body = http_get(f"{target.url}?r=check")
            if status != 200 or set(json.loads(body)) != set(ANSWER):
                raise RuntimeError(f"The sidecar answered {status}: {body[:500]!r}")
        yield Setup(
            tools=bench_tools,
            workdir=workdir,
            direct=Target(
                "direct",
                "upstream nginx, called directly",
                f"http://127.0.0.1:{upstream_port}{ROUTE}",
                "nginx_upstream",
            ),
            nginx=Target(
                "nginx", "nginx proxy_pass", f"http://127.0.0.1:{proxy_port}{ROUTE}", "nginx_proxy"
            ),
            aiohttp=Target(
                "aiohttp",
                "bare aiohttp proxy (no Hush code)",
                f"http://127.0.0.1:{bare_port}{ROUTE}",
                "aiohttp_proxy",
            ),
            sidecars=sidecars,
            pids={
                "nginx_upstream": upstream.pid,
                "nginx_proxy": proxy.pid,
                "aiohttp_proxy": bare.pid,
                "accountant_stub": stub.pid,
                "sidecar": sidecar.pid,
            },
            probe=SidecarProbe(admin_url, stub_url, stub_context),
        )
    finally:
        processes.stop_all()


# -- the rows -----------------------------------------------------------------------------


def throughput_rows(setup: Setup, *, connections: int, seconds: float) -> list[dict[str, Any]]:
    distinct, fixed = wrk_scripts(setup.workdir)
    main_sidecar = setup.sidecars[0]
    plan = [
        (setup.direct, setup.direct.url, fixed),
        (setup.nginx, setup.nginx.url, fixed),
        (setup.aiohttp, setup.aiohttp.url, fixed),
        *((target, target.url, distinct) for target in setup.sidecars),
        (
            Target("sidecar_cache_hits", "sidecar, cache hits", main_sidecar.url, "sidecar"),
            f"{main_sidecar.url}?r=repeated",
            fixed,
        ),
    ]
    rows = []
    for target, url, script in plan:
        label = target.label + (", noised + charged" if script == distinct else "")
        print(f"Measuring throughput: {label} ({seconds:.0f} s)", file=sys.stderr, flush=True)
        run_wrk(setup.tools.wrk, url, script, connections=connections, seconds=WARMUP_SECONDS)
        time.sleep(0.5)  # the requests wrk abandoned at its deadline finish
        before = setup.probe.counts()
        usage: dict[str, float] = {}
        with cpu_usage(setup.pids, usage):
            result = run_wrk(setup.tools.wrk, url, script, connections=connections, seconds=seconds)
        time.sleep(0.5)
        counted = delta(setup.probe.counts(), before)
        if script == distinct:
            check_charged(counted, result["requests"], connections)
        elif counted["released"] or counted["other"]:
            raise RuntimeError(f"Unexpected sidecar outcomes in row {label}: {counted}")
        proxy_cpu = usage[f"{target.proxy}_cpu"] if target.proxy else 0.0
        rows.append(
            {
                "row": target.key,
                "label": label,
                **result,
                "per_core": result["requests_per_s"] / proxy_cpu if proxy_cpu else None,
                "proxy_cpu": proxy_cpu,
                **usage,
                "sidecar_counts": counted,
            }
        )
    return rows


def latency_rows(
    setup: Setup, targets: list[Target], *, rate: float, seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for target in targets:
        label = target.label + (", noised + charged" if target in setup.sidecars else "")
        print(
            f"Measuring latency at {rate:.0f}/s: {label} ({seconds:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        before = setup.probe.counts()
        usage: dict[str, float] = {}
        with cpu_usage(setup.pids, usage):
            result = run_fixed_rate(
                setup.tools.fixed_rate,
                target.url,
                rate=rate,
                seconds=seconds,
                tag=secrets.token_hex(4),
            )
        time.sleep(0.5)
        counted = delta(setup.probe.counts(), before)
        if target in setup.sidecars and not result["failed"]:
            check_charged(counted, result["sent"] + int(rate * WARMUP_SECONDS), 0)
        rows.append(
            {
                "row": target.key,
                "label": label,
                **result,
                "saturated": result["latency_ms"]["p50"] > SATURATED_P50_MS,
                "proxy_cpu": usage[f"{target.proxy}_cpu"] if target.proxy else 0.0,
                **usage,
                "sidecar_counts": counted,
            }
        )
    return rows


# -- the report ---------------------------------------------------------------------------


def disturbed(row: dict[str, Any]) -> bool:
    """Whether others shared the cores, or the generator fell behind (unless saturated)."""
    shared = max(row["proxy_core_others"], row["load_core_others"]) > DISTURBED_SHARE
    lagged = "send_lag_ms" in row and not row["saturated"]
    return shared or (lagged and row["send_lag_ms"]["p99"] > LAGGED_MS)


def print_throughput(rows: list[dict[str, Any]], *, connections: int, seconds: float) -> None:
    nginx = next(row for row in rows if row["row"] == "nginx")
    print(
        f"Throughput: wrk, 1 thread, {connections} connections, {seconds:.0f} s per row; "
        f"proxy alone on CPU {PROXY_CPU}, upstream + stub + wrk on CPU {LOAD_CPU}"
    )
    print(
        f"{'row':<52}{'req/s':>8}{'÷ nginx':>9}{'per core':>10}{'÷ nginx':>9}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'proxy':>7}{'others0':>9}{'others1':>9}"
    )
    for row in rows:
        per_core = row["per_core"] or 0.0
        print(
            f"{row['label']:<52}{row['requests_per_s']:>8.0f}"
            f"{row['requests_per_s'] / nginx['requests_per_s']:>9.3f}{per_core:>10.0f}"
            f"{per_core / nginx['per_core']:>9.3f}{row['p50_us'] / 1000:>8.2f}"
            f"{row['p99_us'] / 1000:>8.2f}{row['proxy_cpu'] * 100:>6.0f}%"
            f"{row['proxy_core_others'] * 100:>8.0f}%{row['load_core_others'] * 100:>8.0f}%"
            f"{'  DISTURBED' if disturbed(row) else ''}"
        )
    print(
        "per core = req/s ÷ the proxy's CPU share (for the direct row: the upstream's); "
        "othersN = share of CPU N used by processes not of this benchmark"
    )


def print_latency(rows: list[dict[str, Any]], *, rate: float, seconds: float) -> None:
    direct = next(row for row in rows if row["row"] == "direct")["latency_ms"]
    print(
        f"Latency: open loop at {rate:.0f} requests/s, {seconds:.0f} s per row after "
        f"{WARMUP_SECONDS} s warm-up; added = percentile through the proxy - the same "
        "percentile direct"
    )
    print(
        f"{'row':<52}{'sent':>6}{'rate':>7}{'p50 ms':>10}{'p99 ms':>10}{'p99.9':>10}"
        f"{'+p50 ms':>10}{'+p99 ms':>10}{'proxy':>7}{'lag p99':>9}{'gen CPU':>8}"
        f"{'others0':>9}{'others1':>9}"
    )
    for row in rows:
        ms = row["latency_ms"]
        added = (
            f"{'':>20}"
            if row["row"] == "direct"
            else f"{ms['p50'] - direct['p50']:>10.3f}{ms['p99'] - direct['p99']:>10.3f}"
        )
        note = "  SATURATED" if row["saturated"] else ""
        note += f"  {row['failed']} FAILED" if row["failed"] else ""
        note += "  DISTURBED" if disturbed(row) else ""
        print(
            f"{row['label']:<52}{row['sent']:>6}{row['achieved_rate']:>7.1f}{ms['p50']:>10.3f}"
            f"{ms['p99']:>10.3f}{ms['p999']:>10.3f}{added}{row['proxy_cpu'] * 100:>6.0f}%"
            f"{row['send_lag_ms']['p99']:>9.3f}{row['generator_cpu_fraction'] * 100:>7.1f}%"
            f"{row['proxy_core_others'] * 100:>8.0f}%{row['load_core_others'] * 100:>8.0f}%{note}"
        )
    print(
        "proxy = the proxy's CPU share (direct: the upstream's); lag = how late the generator "
        "sent, behind its schedule; gen CPU = the generator's CPU share"
    )


def added(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    by_key = {row["row"]: row["latency_ms"] for row in rows}
    return {q: by_key[key][q] - by_key["direct"][q] for q in ("p50", "p99")}


def targets(
    throughput: list[dict[str, Any]], latency: list[dict[str, Any]], sidecars: list[Target]
) -> dict[str, dict[str, Any]]:
    """Each target, for each sidecar configuration: value, limit, met."""
    by_key = {row["row"]: row for row in throughput}
    result = {}
    for target in sidecars:
        extra = added(latency, target.key)
        ratio = by_key[target.key]["per_core"] / by_key["nginx"]["per_core"]
        checks = (
            ("added_p50_ms", extra["p50"], TARGET_ADDED_P50_MS, "<="),
            ("added_p99_ms", extra["p99"], TARGET_ADDED_P99_MS, "<="),
            ("per_core_vs_nginx", ratio, TARGET_THROUGHPUT_RATIO, ">="),
        )
        for name, value, limit, comparison in checks:
            met = value <= limit if comparison == "<=" else value >= limit
            result[f"{target.key}:{name}"] = {
                "label": target.label,
                "value": value,
                "comparison": comparison,
                "limit": limit,
                "met": met,
            }
    return result


def git_state() -> dict[str, Any]:
    def git(*arguments: str) -> str:
        completed = subprocess.run(
            ["git", "-C", str(REPOSITORY), *arguments], capture_output=True, text=True
        )
        return completed.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_sidecar_files": git(
            "status", "--porcelain", "--", "operator/hush/sidecar"
        ).splitlines(),
    }


# -- profile ------------------------------------------------------------------------------

# Where a sample's time goes: the first rule (in this order) matching any frame of the stack.
PROFILE_CATEGORIES = (
    ("noise: OpenDP samplers", r"\(opendp/|_OpenDPSampler"),
    (
        "release step: build, noise, render (hush code)",
        r"hush/(sidecar/(release|deadline)|privacy/route_cost)\.py",
    ),
    ("accountant client: one charge (HTTPS)", r"hush/sidecar/accountant_client\.py"),
    ("upstream request (aiohttp client)", r"Sidecar\._upstream"),
    ("worker-thread hand-off (run_in_executor; GIL waits)", r"concurrent/futures|run_in_executor"),
    ("access log (structlog, logging)", r"\((structlog|logging)/"),
    ("metrics (prometheus_client)", r"\(prometheus_client/"),
    ("TLS (ssl, asyncio sslproto)", r"\((ssl|asyncio/sslproto)\.py"),
    ("proxy: routing, cache, headers, JSON", r"hush/sidecar/|\(json/"),
    ("aiohttp client responses (parsing, callbacks)", r"aiohttp/client"),
    ("aiohttp server (HTTP parsing, responses)", r"\(aiohttp/"),
    ("asyncio event loop and sockets", r"\(asyncio/|\(selectors\.py"),
    ("other", r""),
)
# Leaves where a thread waits rather than runs: the event loop in epoll, the padding sleep,
# an idle worker thread. (py-spy's own idle detection does not see these as idle here.)
IDLE_LEAVES = re.compile(r"^(EpollSelector\.select|_worker|\S*\.wait|\S*_pad|\S*sleep\S*) ")


def profile_sidecar(setup: Setup, *, connections: int, seconds: float) -> dict[str, Any]:
    """Sample the sidecar with py-spy during a noised wrk run; the time per request by part."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    distinct, _ = wrk_scripts(setup.workdir)
    results = {}
    for target in setup.sidecars:
        output = setup.workdir / f"{target.key}-profile.txt"
        print(f"Profiling {target.label} ({seconds:.0f} s)", file=sys.stderr, flush=True)
        options = [
            "--pid", str(setup.pids["sidecar"]), "--rate", "200", "--nonblocking",
            "--format", "raw", "--output", str(output), "--duration", str(round(seconds)),
        ]  # fmt: skip
        recorder = subprocess.Popen(
            pinned(LOAD_CPU, py_spy, "record", *options),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1)  # py-spy attaches
        usage: dict[str, float] = {}
        with cpu_usage(setup.pids, usage):
            result = run_wrk(
                setup.tools.wrk, target.url, distinct, connections=connections, seconds=seconds - 2
            )
        _, errors = recorder.communicate(timeout=seconds + 30)
        if recorder.returncode != 0:
            raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace')}")
        results[target.key] = summarise_profile(
            output, requests_per_s=result["requests_per_s"], cpu_share=usage["sidecar_cpu"]
        )
        results[target.key]["label"] = target.label
        results[target.key]["stacks"] = str(output)
        results[target.key]["usage"] = usage
    return results


def summarise_profile(stacks: Path, *, requests_per_s: float, cpu_share: float) -> dict[str, Any]:
    """Busy samples by category, as shares and as CPU microseconds per request.

    py-spy cannot tell a thread that waits for the GIL or for the (single) core from one that
    runs, so samples are attributed by stack, idle ones dropped by their leaf, and the busy
    shares scaled to the CPU time the process really used (from /proc)."""
    busy: collections.Counter[str] = collections.Counter()
    idle = 0
    rules = [(name, re.compile(pattern)) for name, pattern in PROFILE_CATEGORIES]
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if IDLE_LEAVES.match(frames[-1]):
            idle += int(count)
            continue
        for name, pattern in rules:
            if any(pattern.search(frame) for frame in frames):
                busy[name] += int(count)
                break
    total = sum(busy.values())
    us_per_request = cpu_share / requests_per_s * 1e6
    return {
        "requests_per_s": requests_per_s,
        "cpu_share": cpu_share,
        "cpu_us_per_request": us_per_request,
        "idle_samples": idle,
        "busy_samples": total,
        "categories": {
            name: {"share": count / total, "us_per_request": count / total * us_per_request}
            for name, count in busy.most_common()
        },
    }


def print_profile(results: dict[str, Any]) -> None:
    for result in results.values():
        print(
            f"Profile of {result['label']}: {result['requests_per_s']:.0f} req/s at "
            f"{result['cpu_share'] * 100:.0f} % of CPU {PROXY_CPU} = "
            f"{result['cpu_us_per_request']:.0f} us CPU per request "
            f"({result['busy_samples']} busy py-spy samples; stacks in {result['stacks']})"
        )
        usage = result["usage"]
        if usage["cpu0_busy"] < 0.9:
            # Not CPU-bound: waiting for the upstream or the stub (py-spy shares their core).
            print(
                f"  NOT SATURATED: CPU {PROXY_CPU} {usage['cpu0_busy']:.0%} busy, CPU {LOAD_CPU} "
                f"{usage['cpu1_busy']:.0%} (stub {usage['accountant_stub_cpu']:.0%}); the "
                "shares below are still per request, the rate is not the sidecar's"
            )
        for name, category in result["categories"].items():
            share, micros = category["share"] * 100, category["us_per_request"]
            print(f"  {share:5.1f} %  {micros:6.0f} us  {name}")


# -- main ---------------------------------------------------------------------------------


@contextlib.contextmanager
def only_run() -> Iterator[None]:
    """One sidecar benchmark per machine at a time: two would share CPUs 0 and 1."""
    cache = Path(
        os.environ.get("HUSH_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hush"
    )
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "bench-sidecar.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("Waiting for another sidecar benchmark to finish", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk row")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s of latency rows")
    parser.add_argument("--rate-duration", type=float, default=15.0, help="seconds per row")
    parser.add_argument("--workdir", type=Path, help="keep logs and configs here (default: temp)")
    parser.add_argument(
        "--profile", action="store_true", help="profile the sidecar with py-spy instead"
    )
    arguments = parser.parse_args()
    if not {0, 1} <= os.sched_getaffinity(0):
        print("The sidecar benchmark needs CPUs 0 and 1", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        stack.enter_context(only_run())
        if arguments.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hush-bench-")))
        else:
            workdir = arguments.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        load_before = load_average()
        print(f"load average {load_before}", file=sys.stderr, flush=True)
        setup = stack.enter_context(running_setup(workdir))
        if arguments.profile:
            profile = profile_sidecar(
                setup, connections=arguments.connections, seconds=max(arguments.duration, 10)
            )
            print_profile(profile)
            print(f"load average before {load_before}, after {load_average()}")
            print(json.dumps({"benchmark": "sidecar-profile", "profile": profile}))
            return 0
        throughput = throughput_rows(
            setup, connections=arguments.connections, seconds=arguments.duration
        )
        noised = {target.key for target in setup.sidecars}
        slowest = min(row["requests_per_s"] for row in throughput if row["row"] in noised)
        # At a quarter of its throughput (at low concurrency each request costs the sidecar
        # more CPU than under full load), and before the target rate, whose saturated rows
        # leave the sidecar with hundreds of open connections.
        sustainable: list[dict[str, Any]] = []
        sustainable_rate = max(10.0, (slowest / 4) // 10 * 10)
        if slowest < arguments.rate * 1.1:
            sustainable = latency_rows(
                setup,
                [setup.direct, *setup.sidecars],
                rate=sustainable_rate,
                seconds=arguments.rate_duration,
            )
        latency = latency_rows(
            setup,
            [setup.direct, setup.nginx, *setup.sidecars],
            rate=arguments.rate,
            seconds=arguments.rate_duration,
        )
        load_after = load_average()

    print()
    print_throughput(throughput, connections=arguments.connections, seconds=arguments.duration)
    print()
    print_latency(latency, rate=arguments.rate, seconds=arguments.rate_duration)
    if sustainable:
        print()
        print(
            f"The sidecar cannot sustain {arguments.rate:.0f}/s on one core ({slowest:.0f}/s "
            "at most), so its latency above is queueing. The same at a quarter of that:"
        )
        print_latency(sustainable, rate=sustainable_rate, seconds=arguments.rate_duration)
    print()
    print(
        "Every sidecar answer counted above (but the cache-hit row) was noised (3 fields, "
        "Laplace) and charged: one charge at the accountant STUB "
        "(bench/accountant_stub.py: HTTPS, the real protocol, answers at once; the real "
        "accountant's rate is bench/bench_accountant.py's), checked against the sidecar's "
        "metrics and the stub's counts."
    )
    nginx_added = added(latency, "nginx")
    print(
        f"nginx proxy_pass for reference: +p50 {nginx_added['p50']:.3f} ms, "
        f"+p99 {nginx_added['p99']:.3f} ms at {arguments.rate:.0f}/s"
    )
    goals = targets(throughput, latency, setup.sidecars)
    for name, goal in goals.items():
        print(
            f"target {name.split(':')[1]} ({goal['label']}): {goal['value']:.3f} "
            f"{goal['comparison']} "
            f"{goal['limit']}: {'MET' if goal['met'] else 'MISSED'}"
        )
    disturbed_rows = [
        row["label"] for row in [*throughput, *latency, *sustainable] if disturbed(row)
    ]
    if disturbed_rows:
        print(
            f"WARNING: {len(disturbed_rows)} rows were DISTURBED (other processes used more "
            f"than {DISTURBED_SHARE:.0%} of a core, or the load generator lagged more than "
            f"{LAGGED_MS:.0f} ms behind schedule): rerun on a quiet machine"
        )
    print(f"load average before {load_before}, after {load_after}")
    summary = {
        "benchmark": "sidecar",
        "load_average": {"before": load_before, "after": load_after},
        "disturbed_rows": disturbed_rows,
        "git": git_state(),
        "settings": {
            "connections": arguments.connections,
            "throughput_seconds": arguments.duration,
            "rate": arguments.rate,
            "latency_seconds": arguments.rate_duration,
            "proxy_cpu": PROXY_CPU,
            "load_cpu": LOAD_CPU,
            "accountant": "stub (bench/accountant_stub.py)",
            "release_deadline_default": default_release_deadline(),
        },
        "throughput": throughput,
        "latency": latency,
        "latency_sustainable": {"rate": sustainable_rate, "rows": sustainable},
        "targets": goals,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
