"""Text made safe for a terminal or a log line.

Command lines, audit messages and parse errors carry text a hostile process
chose (its argv, its environment). Written raw, an `ESC ]0;...BEL` retitles
the operator's terminal, `ESC c` resets it, and a newline forges a log line.
`safe_text` escapes every control character (C0, DEL, C1) and the Unicode
bidi overrides as `\\xNN` / `\\uNNNN`; printable text, including non-ASCII
letters, is unchanged. `SafeFormatter` applies it to every log record.
"""

from __future__ import annotations

import logging
import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """`text` with every control or bidi character escaped (a no-op for ordinary text)."""
    return _UNSAFE.sub(_escape, text)


class SafeFormatter(logging.Formatter):
    """A log formatter whose lines never carry raw control characters (tracebacks keep their newlines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:   # noqa: N802 (logging's naming)
        return safe_text(super().formatMessage(record))
