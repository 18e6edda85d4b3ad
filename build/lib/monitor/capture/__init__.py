"""Live capture of socat connections: BPF tracepoints -> typed events.

`Capture(CaptureConfig(...))` loads `bpf/capture.c`, and `poll()` returns
`ConnectionEvent`/`ProcessEvent` records (and `PipelineError` for losses).
"""

from .capture import Capture, CaptureConfig, CaptureStats

__all__ = ["Capture", "CaptureConfig", "CaptureStats"]
