"""Kibana's NDJSON import APIs (saved objects, detection rules): one multipart POST.

`KibanaTarget` carries what every call needs (base URL, space, the
`Authorization` header, TLS options); `import_ndjson()` posts a file the way
Kibana's `_import` endpoints take it (`kbn-xsrf`, multipart field `file`,
`?overwrite=true`) and returns how many objects Kibana took and its JSON
answer, or raises EnvironmentProblem with one line when Kibana cannot be
reached or refuses an object.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import EnvironmentProblem, InputError


def auth_header(username: str | None, password: str | None, api_key: str | None) -> str | None:
    """The `Authorization` header for basic auth or an API key (base64 `id:key`), or None."""
    if api_key and username:
        raise InputError("--api-key", "give either --username/--password or --api-key, not both")
    if api_key:
        return f"ApiKey {api_key}"
    if username:
        return "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
    return None


@dataclass(frozen=True, slots=True)
class KibanaTarget:
    url: str
    space: str | None = None
    authorization: str | None = None
    ca_file: str | None = None       # CA bundle for an https:// Kibana
    insecure: bool = False           # https:// without verifying the certificate
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise InputError("--kibana", f"expected an http:// or https:// URL, got {self.url!r}")
        if self.ca_file and self.insecure:
            raise InputError("--insecure", "give either --ca-file or --insecure, not both")

    def base(self) -> str:
        space = f"/s/{quote(self.space, safe='')}" if self.space and self.space != "default" else ""
        return self.url.rstrip("/") + space

    def tls(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https://"):
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise InputError("--ca-file", f"cannot read {self.ca_file}: {exc}") from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def post_ndjson(target: KibanaTarget, api_path: str, filename: str, ndjson: str) -> dict[str, Any]:
    """POST the NDJSON to `<kibana>[/s/<space>]<api_path>?overwrite=true`; Kibana's answer."""
    boundary = "socat-monitor-" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/ndjson\r\n\r\n").encode() + ndjson.encode() + f"\r\n--{boundary}--\r\n".encode()
    headers = {"kbn-xsrf": "true", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    if target.authorization:
        headers["Authorization"] = target.authorization
    request = urllib.request.Request(f"{target.base()}{api_path}?overwrite=true", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=target.timeout_s, context=target.tls()) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace").strip()
        raise EnvironmentProblem(target.url, f"Kibana refused the import: HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnvironmentProblem(target.url, f"cannot reach Kibana: {reason}",
                                 "check --kibana and that Kibana runs") from None
    except ValueError:
        raise EnvironmentProblem(target.url, "Kibana answered with something that is not JSON") from None


def _first_error(answer: dict[str, Any]) -> str:
    """The first failure of either answer format (saved objects: type/id/error; rules: rule_id/error)."""
    errors = answer.get("errors") or [{}]
    first = errors[0]
    error = first.get("error")
    reason = error.get("message", error) if isinstance(error, dict) else error
    return f"{first.get('rule_id') or (str(first.get('type')) + ' ' + str(first.get('id')))}: {reason}"


def import_ndjson(target: KibanaTarget, api_path: str, filename: str, ndjson: str,
                  what: str) -> tuple[int, dict[str, Any]]:
    """Import `what` (e.g. "saved objects"); (how many Kibana took, its answer). A refused one raises."""
    answer = post_ndjson(target, api_path, filename, ndjson)
    count = int(answer.get("successCount", answer.get("success_count", 0)))
    if not answer.get("success", False):
        failed = len(answer.get("errors") or [])
        raise EnvironmentProblem(target.url, f"Kibana imported {count} {what}, {failed} failed "
                                             f"(first: {_first_error(answer)})")
    return count, answer
