"""Anomaly detection: learned baselines, sliding windows and the five anomaly rules.

Pure over events and state (no I/O besides `Baseline.load/save`): each rule
is written once, in the engine (`BatchEngine`), which offline
`monitor.replay.analyze` runs over file chunks and the live `Detector` runs
over what it observed (at each tick, or at once when an event crosses a
threshold).
"""

from .baseline import Baseline
from .batch import BatchEngine
from .config import RULES, DetectConfig
from .detector import Detector
from .rows import IpTable, Rows

__all__ = ["RULES", "Baseline", "BatchEngine", "DetectConfig", "Detector", "IpTable", "Rows"]
