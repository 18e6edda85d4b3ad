"""Credentials kept out of everything socat-monitor prints, logs or writes.

`redact_url` hides the password of a URL's user part; `redact_settings`
walks a settings mapping (as `config show` prints it) and hides every value
whose key names a secret, and the user part of every URL. `cleartext_credentials`
tells whether a URL would send credentials without TLS.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
SECRET_KEYS = frozenset({"password", "api_key", "token", "secret", "authorization"})


def redact_url(url: str) -> str:
    """`https://user:pw@host/` -> `https://user:***@host/`; a URL without a password is unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{HIDDEN}@{host}"))


def redact_settings(value: Any, key: str | None = None) -> Any:
    """A copy of `value` (mappings, lists, text) with secrets hidden."""
    if isinstance(value, dict):
        return {k: redact_settings(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_settings(v, key) for v in value]
    if key in SECRET_KEYS and value is not None:
        return HIDDEN
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def cleartext_credentials(url: str, has_credentials: bool) -> bool:
    """True when credentials (in the URL or given beside it) would cross the network unencrypted."""
    parts = urlsplit(url)
    return parts.scheme == "http" and (has_credentials or parts.password is not None or bool(parts.username))
