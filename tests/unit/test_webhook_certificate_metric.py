"""Every certificate the keeper loads sets ``hush_webhook_certificate_expiry_timestamp_seconds``,
the gauge behind the chart's ``HushWebhookCertificateNearExpiry`` alert."""

from __future__ import annotations

import datetime
from pathlib import Path

import prometheus_client
from cryptography import x509

from hush.dev import pki
from hush.webhook import certificates


def _expiry_gauge() -> float | None:
    return prometheus_client.REGISTRY.get_sample_value(
        "hush_webhook_certificate_expiry_timestamp_seconds"
    )


async def test_the_expiry_of_the_served_certificate_is_exported(
    tmp_path: Path, now: datetime.datetime
) -> None:
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    pki.write_loopback_serving_files(cert_file, key_file, common_name="hush-webhook", now=now)
    keeper = certificates.Keeper(
        certificates.FileSource(cert_file, key_file), directory=tmp_path / "served"
    )
    await keeper.sync()
    leaf = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    assert _expiry_gauge() == leaf.not_valid_after_utc.timestamp()

    # A renewed pair replaces the value.
    later = now + datetime.timedelta(days=40)
    pki.write_loopback_serving_files(cert_file, key_file, common_name="hush-webhook", now=later)
    assert await keeper.sync()
    renewed = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    assert renewed.not_valid_after_utc > leaf.not_valid_after_utc
    assert _expiry_gauge() == renewed.not_valid_after_utc.timestamp()
    await keeper.stop()
