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
from urllib.parse import quote

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
class ServerInfo:
    version: tuple[int, ...]
    flavor: str                 # "oss" for the OSS build, "default" otherwise

    @property
    def has_wildcard(self) -> bool:
        """The `wildcard` field type: 7.9 and later, default distribution only."""
        return self.flavor != "oss" and self.version >= (7, 9)


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

    def template(self, name: str) -> dict[str, Any] | None:
        """The installed composable template's body, or None when absent."""
        try:
            found = self._call(self._es.transport.perform_request, "GET", f"/_index_template/{name}")
        except es_exc.NotFoundError:
            return None
        for item in found.get("index_templates", []):
            if item.get("name") == name:
                return item["index_template"]
        return None

    def template_version(self, name: str) -> int | None:
        """Installed version of a composable template (None: absent; 0: no version)."""
        body = self.template(name)
        return None if body is None else int(body.get("version") or 0)

    def delete_template(self, name: str) -> None:
        self._call(self._es.transport.perform_request, "DELETE", f"/_index_template/{name}")

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        self._call(self._es.transport.perform_request, "PUT", f"/_index_template/{name}", body=body)

    def server(self) -> ServerInfo:
        """Version and build flavor of the server (`GET /`)."""
        info = self._call(self._es.info)
        version = info.get("version", {})
        numbers = tuple(int(x) for x in re.findall(r"\d+", version.get("number", "0"))[:2])
        return ServerInfo(numbers, version.get("build_flavor", "default"))

    def has_ilm(self) -> bool:
        """True when the server has index lifecycle management (the default distribution)."""
        try:
            self._call(self._es.transport.perform_request, "GET", "/_ilm/policy")
        except es_exc.NotFoundError:
            return False
        except Unavailable as exc:
            if exc.status in (400, 405):      # the OSS build: no such API
                return False
            if exc.status == 403:             # not allowed to read ILM: the agent rolls over itself
                logging.getLogger(__name__).warning("elasticsearch: no privilege to read ILM policies (%s); "
                                                    "the agent manages rollover and retention", exc)
                return False
            raise
        return True

    def put_pipeline(self, name: str, body: dict[str, Any]) -> None:
        self._call(self._es.transport.perform_request, "PUT", f"/_ingest/pipeline/{quote(name)}", body=body)

    def put_ilm_policy(self, name: str, body: dict[str, Any]) -> None:
        self._call(self._es.transport.perform_request, "PUT", f"/_ilm/policy/{quote(name)}", body=body)

    def rollover(self, alias: str, conditions: dict[str, Any]) -> str | None:
        """Roll the alias over if a condition is met; the new write index, or None if it was not rolled."""
        answer = self._call(self._es.indices.rollover, alias=alias, body={"conditions": conditions})
        return answer.get("new_index") if answer.get("rolled_over") else None

    def alias_indices(self, alias: str) -> dict[str, int]:
        """Index -> creation time (ms since the epoch) of every index behind the alias."""
        try:
            found = self._call(self._es.indices.get_settings, index=alias, name="index.creation_date")
        except es_exc.NotFoundError:
            return {}
        return {index: int(body["settings"]["index"]["creation_date"]) for index, body in found.items()}

    def delete_index(self, index: str) -> None:
        try:
            self._call(self._es.indices.delete, index=index)
        except es_exc.NotFoundError:
            pass

    def existing_ids(self, alias: str, ids: list[str]) -> set[str]:
        """Which of the ids any index behind the alias already holds (refreshes it first)."""
        self._call(self._es.indices.refresh, index=alias)
        found: set[str] = set()
        for start in range(0, len(ids), 5000):
            chunk = ids[start:start + 5000]
            answer = self._call(self._es.search, index=alias, filter_path="hits.hits._id",
                                body={"size": len(chunk), "_source": False,
                                      "query": {"ids": {"values": chunk}}})
            found.update(hit["_id"] for hit in answer.get("hits", {}).get("hits", []))
        return found

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
