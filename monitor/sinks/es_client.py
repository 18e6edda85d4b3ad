"""All Elasticsearch I/O of socat-monitor, behind one small class.

Uses elasticsearch-py 7.13.4 (pinned): the last client line that talks to
every server from 7.x OSS on without a product check (7.14+ refuse OSS
builds, 8.x/9.x clients refuse 7.x servers). The calls made are plain REST
APIs that are unchanged in 8.x and 9.x servers: `GET/PUT _index_template`
(composable, 7.8+), `HEAD _alias`, `PUT <index>` with a write alias, and
`_bulk` with typeless `create` actions. Failures become `Unavailable`
(retry later: connection, timeout, 429, 5xx, auth/config problems) carrying
one readable line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import elasticsearch
from elasticsearch import exceptions as es_exc

# the client logs every failed request itself; we report failures once, as PipelineError
logging.getLogger("elasticsearch").setLevel(logging.ERROR)

BULK_FILTER = "errors,items.*.status,items.*.error.type,items.*.error.reason"


class Unavailable(Exception):
    """The request did not complete; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ItemResult:
    status: int
    error: str | None = None


def _describe(exc: Exception) -> Unavailable:
    if isinstance(exc, es_exc.ConnectionTimeout):
        return Unavailable(f"timed out: {exc.info if hasattr(exc, 'info') else exc}")
    if isinstance(exc, es_exc.ConnectionError):
        cause = exc.info if isinstance(exc.info, Exception) else exc
        return Unavailable("cannot connect: " + re.sub(r"<[^>]*>: ", "", str(cause)))
    if isinstance(exc, es_exc.TransportError):
        status = exc.status_code if isinstance(exc.status_code, int) else None
        reason = exc.error
        if isinstance(exc.info, dict):
            err = exc.info.get("error")
            if isinstance(err, dict):
                reason = f"{err.get('type')}: {err.get('reason')}"
        return Unavailable(f"HTTP {status}: {reason}", status)
    return Unavailable(f"{type(exc).__name__}: {exc}")


class EsClient:
    def __init__(self, urls: list[str], *, username: str | None = None, password: str | None = None,
                 api_key: str | None = None, ca_file: str | None = None, verify_certs: bool = True,
                 timeout_s: float = 10.0):
        kwargs: dict[str, Any] = {"timeout": timeout_s, "max_retries": 0, "retry_on_timeout": False}
        if username is not None:
            kwargs["http_auth"] = (username, password or "")
        if api_key is not None:
            kwargs["api_key"] = api_key
        if ca_file is not None:
            kwargs["ca_certs"] = ca_file
        if any(u.startswith("https://") for u in urls):
            kwargs["verify_certs"] = verify_certs
        self.urls = urls
        self._es = elasticsearch.Elasticsearch(urls, **kwargs)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except es_exc.NotFoundError:
            raise
        except Exception as exc:  # every transport failure becomes one readable line
            raise _describe(exc) from None

    def server_version(self) -> str:
        """The server's version number (`GET /`): proves it answers and that our credentials pass."""
        return str(self._call(self._es.info)["version"]["number"])

    def template_version(self, name: str) -> int | None:
        """Installed version of a composable template (None: absent; 0: no version)."""
        try:
            found = self._call(self._es.transport.perform_request, "GET", f"/_index_template/{name}")
        except es_exc.NotFoundError:
            return None
        for item in found.get("index_templates", []):
            if item.get("name") == name:
                return int(item["index_template"].get("version") or 0)
        return None

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        self._call(self._es.transport.perform_request, "PUT", f"/_index_template/{name}", body=body)

    def alias_exists(self, alias: str) -> bool:
        return bool(self._call(self._es.indices.exists_alias, name=alias))

    def index_exists(self, index: str) -> bool:
        return bool(self._call(self._es.indices.exists, index=index))

    def create_index_with_alias(self, index: str, alias: str) -> None:
        body = {"aliases": {alias: {"is_write_index": True}}}
        try:
            self._call(self._es.indices.create, index=index, body=body)
        except Unavailable as exc:
            if "resource_already_exists_exception" not in str(exc):
                raise

    def bulk(self, body: bytes) -> list[ItemResult]:
        """Send an NDJSON bulk body; the result of every item, in order."""
        resp = self._call(self._es.bulk, body=body, filter_path=BULK_FILTER)
        items = resp.get("items")
        if items is None:
            raise Unavailable("bulk answer without items")
        out = []
        for item in items:
            (result,) = item.values()
            err = result.get("error")
            out.append(ItemResult(int(result["status"]),
                                  f"{err.get('type')}: {err.get('reason')}" if err else None))
        return out

    def refresh(self, index: str) -> None:
        self._call(self._es.indices.refresh, index=index)

    def close(self) -> None:
        self._es.transport.close()
