"""HTTP health probes of the control plane components.

Readiness is asked of each component's own endpoint (etcd ``/health``, kube-apiserver
``/readyz``, the others ``/healthz``) rather than inferred from the process being alive: a
process can run for many seconds before it serves, and the next component fails confusingly
if started too early. HTTPS probes verify the server against the cluster CA and present the
admin client certificate, which every component trusts; nothing here disables verification.

Only the standard library is used: ``hush dev status`` probes five endpoints and should
answer quickly.
"""

from __future__ import annotations

import dataclasses
import http.client
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

DEFAULT_TIMEOUT_SECONDS: Final = 2.0


@dataclasses.dataclass(frozen=True)
class TlsClient:
    """How to reach an HTTPS endpoint: its CA and, for the components, a client identity
    (Hush's own endpoints need none)."""

    ca_certificate: Path
    client_certificate: Path | None = None
    client_key: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_certificate))
        if self.client_certificate is not None and self.client_key is not None:
            context.load_cert_chain(str(self.client_certificate), str(self.client_key))
        return context


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    detail: str


def probe(
    url: str, *, tls: TlsClient | None, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> ProbeResult:
    """GET ``url``; healthy when it answers 200 (and, for etcd's JSON, ``health: true``)."""
    context = tls.context() if url.startswith("https:") and tls is not None else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310
            body = response.read(4096).decode("utf-8", errors="replace").strip()
    except urllib.error.HTTPError as error:
        body = error.read(4096).decode("utf-8", errors="replace").strip()
        return ProbeResult(False, f"HTTP {error.code}: {body[-500:]}")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        return ProbeResult(False, f"{type(error).__name__}: {reason}")
    if '"health"' in body and '"true"' not in body:
        return ProbeResult(False, body[-500:])
    return ProbeResult(True, body[-200:])
