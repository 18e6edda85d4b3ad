"""socat-monitor: eBPF-assisted connection monitor for socat relays.

The package is a pipeline, one module per stage:
capture -> enrich -> policy -> detect -> (enforce) -> sinks,
wired together by `agent` and driven by `cli`.
"""

__version__ = "0.1.0"
