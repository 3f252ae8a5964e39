"""``X-DP-Accuracy`` through a real sidecar: 10,000 releases of a known count, each a fresh
query charged at the real accountant, land within the header's 95 % half-width 95 % ± 1 % of
the time (issue 18).

The set-up is ``test_release_contract``'s: the real apiserver and accountant, a Pod the
mutating webhook injected, its ``hush-sidecar`` container run as a host process in front of a
scripted application that always answers ``{"count": 1000}``. The route is a Laplace count at
epsilon 0.1 (scale 10: a half-width of about 30), so the quota holds 10,000 releases.

False failures: the number of releases within the interval is Binomial(10,000, 0.95) if the
header is right; its standard deviation is 0.22 %, so leaving 95 % ± 1 % takes 4.6 standard
deviations, a probability of about 4e-6 per run.
"""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

from kubernetes import client

from test_release_contract import _ScriptedApp, _sidecar
from test_sidecar import accountant

__all__ = ["accountant"]  # a fixture: imported to be used, not re-exported

RELEASES = 10_000
TRUE_COUNT = 1000
CLIENTS = 8


def test_releases_land_within_the_declared_accuracy_95_percent_of_the_time(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any], tmp_path: Path
) -> None:
    _ScriptedApp.script({"/count": (200, {"count": TRUE_COUNT})})
    with _sidecar(
        api_client, namespace, accountant, tmp_path, team_epsilon=1000.0, total_epsilon=1000.0
    ) as sidecar:

        def release(index: int) -> tuple[float, float]:
            status, headers, body = sidecar.request(f"/count?fresh={index}")
            assert status == 200, body
            assert "X-DP-Cache" not in headers  # a fresh query: a new, charged release
            path, _, width = headers["X-DP-Accuracy"].partition("=")
            assert path == "$.count"
            return float(json.loads(body)["count"]), float(width)

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(release, range(RELEASES)))
    widths = {width for _, width in answers}
    assert len(widths) == 1, widths  # data-independent: the same for every answer
    [width] = widths
    assert 25 < width < 35  # 10 ln 20 = 29.96, rounded up for display
    inside = sum(1 for value, _ in answers if abs(value - TRUE_COUNT) <= width) / RELEASES
    print(f"{RELEASES} releases: {inside:.2%} within +-{width}")
    assert 0.94 <= inside <= 0.96, inside
    assert _ScriptedApp.calls["/count"] == RELEASES
