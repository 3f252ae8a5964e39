"""The demo's sample application: an aggregate HTTP API over a fixed synthetic dataset.

It stands in for an application team's service, the kind Hush is for: it answers counts,
sums and histograms over people, with the *raw* values, and knows nothing about
differential privacy. The sidecar in front of it noises what it releases.

``GET /count?region=R``   ``{"count": n}``
``GET /income?region=R``  ``{"sum": s, "unit": "EUR"}`` (incomes clamped to 0..100000, as the
                          policy's bounds say)
``GET /ages?region=R``    ``{"histogram": {"0-17": n, "18-39": n, "40-64": n, "65+": n}}``
``GET /healthz``          ``ok``

Without ``region`` the whole dataset is counted. The dataset is generated from a fixed seed:
nothing here is personal data, and every run of the demo sees the same raw values.
:func:`answer` is pure; :func:`serving` runs it in a thread of the calling process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from http import server
from typing import Any, Final

REGIONS: Final = ("north", "south", "east", "west", "central")
AGE_BINS: Final = {"0-17": (0, 17), "18-39": (18, 39), "40-64": (40, 64), "65+": (65, 200)}
INCOME_UPPER_BOUND: Final = 100_000
_SEED: Final = 20261122
_PEOPLE_COUNT: Final = 2000


@dataclasses.dataclass(frozen=True)
class Person:
    region: str
    age: int
    income: int


def _generate() -> tuple[Person, ...]:
    generator = random.Random(_SEED)  # noqa: S311 - synthetic data, not noise
    return tuple(
        Person(
            region=generator.choice(REGIONS),
            age=generator.randint(0, 95),
            income=generator.randint(0, 150_000),
        )
        for _ in range(_PEOPLE_COUNT)
    )


PEOPLE: Final = _generate()


def answer(path: str, query: Mapping[str, str]) -> dict[str, Any] | None:
    """The raw answer to ``path`` with ``query``, or None for an unknown path."""
    region = query.get("region")
    people = [person for person in PEOPLE if region is None or person.region == region]
    if path == "/count":
        return {"count": len(people)}
    if path == "/income":
        total = sum(min(person.income, INCOME_UPPER_BOUND) for person in people)
        return {"sum": total, "unit": "EUR"}
    if path == "/ages":
        return {
            "histogram": {
                name: sum(1 for person in people if low <= person.age <= high)
                for name, (low, high) in AGE_BINS.items()
            }
        }
    return None


class _Handler(server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == "/healthz":
            body, status, content_type = b"ok", 200, "text/plain"
        else:
            query = dict(urllib.parse.parse_qsl(parsed.query))
            found = answer(parsed.path, query)
            body = json.dumps(found if found is not None else {"error": "not found"}).encode()
            status, content_type = (200 if found is not None else 404), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo prints what matters."""


@contextlib.contextmanager
def serving(host: str, port: int) -> Iterator[int]:
    """Serve the sample app on ``host:port`` (0: any free port) in a thread; yield the port."""
    httpd = server.ThreadingHTTPServer((host, port), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="sample-app", daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
