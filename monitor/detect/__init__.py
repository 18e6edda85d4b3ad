"""Anomaly detection: learned baselines, sliding windows and the five anomaly rules.

Pure over events and state (no I/O besides `Baseline.load/save`): the agent
feeds `Detector` live, `monitor.replay.analyze` replays files through the same
crossing rules vectorised (`BatchEngine`).
"""

from ..duration import parse_duration
from .baseline import Baseline
from .batch import BatchEngine
from .config import RULES, DetectConfig
from .detector import Detector
from .rows import IpTable, Rows

__all__ = ["RULES", "Baseline", "BatchEngine", "DetectConfig", "Detector", "IpTable", "Rows", "parse_duration"]
