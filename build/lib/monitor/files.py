"""Files the agent writes: created private, never written through a symlink.

The agent runs as root and writes where its config says (the output and
state directories, the alert feed, the dead-letter file). `open_append`
creates a file with a private mode (0600 by default; 0640 for outputs a log
group may read) and refuses to follow a symlink at the last component, so
nobody who can write the directory can point the agent's writes at
`/etc/shadow`. The systemd unit adds `UMask=0077` for everything else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

PRIVATE = 0o600
GROUP_READABLE = 0o640
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW


def open_append_fd(path: str | Path, mode: int = PRIVATE) -> int:
    """A file descriptor appending to `path` (created with `mode`, parents made); OSError on a symlink."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, _FLAGS, mode)


def open_append(path: str | Path, mode: int = PRIVATE) -> BinaryIO:
    """`open_append_fd` as a binary file object."""
    return os.fdopen(open_append_fd(path, mode), "ab")
