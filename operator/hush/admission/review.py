"""AdmissionReview (admission.k8s.io/v1) in and out: parse a request, build the answer.

Parsing never raises on bad input: a body that is not an AdmissionReview, or one whose
request lacks what a decision needs, becomes a ``MalformedReviewError`` that the server turns
into a well-formed *denial* (HTTP 200, ``allowed: false``, code 400, a message that says
what was wrong). An answer the apiserver can read is better than a 500 it has to
interpret through ``failurePolicy``.

Answers carry JSON Patch (RFC 6902) for mutations, admission warnings for ``warn`` mode,
and audit annotations for ``audit`` mode.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"

# The apiserver truncates each warning at 256 characters (k8s.io/apiserver
# pkg/admission/plugin/webhook/validating: "truncated to 256 characters"); 120 is the
# length past which kubectl wraps them unreadably.
MAX_WARNING_LENGTH = 256
MAX_MESSAGE_LENGTH = 4096


class MalformedReviewError(ValueError):
    """The body is not an AdmissionReview this webhook can decide; ``uid`` if one was found."""

    def __init__(self, message: str, uid: str = "") -> None:
        super().__init__(message)
        self.uid = uid


@dataclasses.dataclass(frozen=True, kw_only=True)
class UserInfo:
    username: str
    groups: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    """The parts of ``AdmissionReview.request`` that Hush's decisions use."""

    uid: str
    kind: str  # e.g. "Pod", "Deployment", "PodExecOptions"
    group: str
    resource: str  # e.g. "pods"
    sub_resource: str  # "" or e.g. "exec", "attach", "ephemeralcontainers"
    operation: str  # CREATE, UPDATE, DELETE, CONNECT
    namespace: str
    name: str
    user: UserInfo
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    dry_run: bool

    def describe(self) -> str:
        """``Pod team-a/web-1`` (or ``Pod team-a/<generated>`` before a name exists)."""
        name = self.name or _generated_name(self.object) or "<unnamed>"
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{name}"


def _generated_name(obj: Mapping[str, Any] | None) -> str:
    metadata = (obj or {}).get("metadata")
    if not isinstance(metadata, Mapping):
        return ""
    name = metadata.get("name")
    if isinstance(name, str) and name:
        return name
    prefix = metadata.get("generateName")
    return f"{prefix}<generated>" if isinstance(prefix, str) and prefix else ""


def _mapping(value: Any, what: str, uid: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MalformedReviewError(f"request.{what} must be an object", uid)
    return value


def _string(document: Mapping[str, Any], key: str, uid: str, *, required: bool) -> str:
    value = document.get(key)
    if value is None or value == "":
        if required:
            raise MalformedReviewError(f"request.{key} is missing", uid)
        return ""
    if not isinstance(value, str):
        raise MalformedReviewError(f"request.{key} must be a string", uid)
    return value


def parse(body: bytes) -> Request:
    """The request in ``body``; ``MalformedReviewError`` says what is wrong with it."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedReviewError(f"The body is not JSON: {error}") from None
    if not isinstance(document, Mapping):
        raise MalformedReviewError("The body is not a JSON object")
    if document.get("kind") != KIND or document.get("apiVersion") != API_VERSION:
        raise MalformedReviewError(
            f"Expected apiVersion {API_VERSION} kind {KIND}; got "
            f"{document.get('apiVersion')!r} {document.get('kind')!r} "
            "(set admissionReviewVersions: [v1] in the webhook configuration)"
        )
    request = document.get("request")
    if not isinstance(request, Mapping):
        raise MalformedReviewError("The AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReviewError("request.uid is missing")
    kind = _mapping(request.get("kind"), "kind", uid) or {}
    resource = _mapping(request.get("resource"), "resource", uid) or {}
    user = _mapping(request.get("userInfo"), "userInfo", uid) or {}
    groups = user.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
        raise MalformedReviewError("request.userInfo.groups must be a list of strings", uid)
    kind_name = kind.get("kind")
    if not isinstance(kind_name, str) or not kind_name:
        raise MalformedReviewError("request.kind.kind is missing", uid)
    return Request(
        uid=uid,
        kind=kind_name,
        group=str(kind.get("group") or ""),
        resource=str(resource.get("resource") or ""),
        sub_resource=_string(request, "subResource", uid, required=False),
        operation=_string(request, "operation", uid, required=True),
        namespace=_string(request, "namespace", uid, required=False),
        name=_string(request, "name", uid, required=False),
        user=UserInfo(username=str(user.get("username") or ""), groups=tuple(groups)),
        object=_mapping(request.get("object"), "object", uid),
        old_object=_mapping(request.get("oldObject"), "oldObject", uid),
        dry_run=bool(request.get("dryRun")),
    )


def _envelope(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def allow(
    uid: str,
    *,
    patch: Sequence[Mapping[str, Any]] = (),
    patch_json: str = "",
    warnings: Sequence[str] = (),
    audit_annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Allowed, with an optional JSON Patch (as operations, or already encoded as
    ``patch_json``), warnings and audit annotations."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch or patch_json:
        encoded = (patch_json or json.dumps(list(patch), separators=(",", ":"))).encode()
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(encoded).decode("ascii")
    if warnings:
        response["warnings"] = [_clip(warning, MAX_WARNING_LENGTH) for warning in warnings]
    if audit_annotations:
        response["auditAnnotations"] = dict(audit_annotations)
    return _envelope(response)


def deny(uid: str, message: str, *, code: int = 403, reason: str = "Forbidden") -> dict[str, Any]:
    """Denied; ``message`` is what ``kubectl`` shows, so it must say how to fix it."""
    return _envelope(
        {
            "uid": uid,
            "allowed": False,
            "status": {
                "code": code,
                "reason": reason,
                "message": _clip(message, MAX_MESSAGE_LENGTH),
            },
        }
    )


def deny_malformed(error: MalformedReviewError) -> dict[str, Any]:
    return deny(
        error.uid,
        f"Hush could not read this AdmissionReview: {error}",
        code=400,
        reason="BadRequest",
    )


def decode_patch(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON Patch in an answer (tests and ``hush`` tooling read answers back)."""
    encoded = (answer.get("response") or {}).get("patch")
    if not encoded:
        return []
    decoded = json.loads(base64.b64decode(encoded))
    if not isinstance(decoded, list):
        raise ValueError("The patch is not a JSON Patch list")
    return decoded
