"""socat-monitor: eBPF-assisted connection monitor for socat relays.

The package is a pipeline, one module per stage:
capture -> enrich -> policy -> detect -> (enforce) -> sinks,
wired together by `agent` and driven by `cli`.

`BPF_DIR` holds the BPF C sources that bcc compiles at start: `monitor/bpf`
links to the repository's `bpf/` folder, so a checkout reads them in place and
an installed copy carries them as package data (its own, root-owned files).
"""

from pathlib import Path

__version__ = "0.1.0"

BPF_DIR = Path(__file__).resolve().parent / "bpf"
