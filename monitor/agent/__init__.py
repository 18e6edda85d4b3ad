"""The agent: wires capture -> pipeline -> sinks, and runs them.

- `agent`: `Agent`, the running parts, signals, start and stop;
- `wiring`: building each stage from the `Config` (policy, detector,
  enforcer, egress rules, sinks);
- `loops`: the capture thread, the bounded hand-off queue and the main loop's
  periodic tasks;
- `reload`: applying a new config and policy while running;
- `report`: the typed `status` answer, the metrics samples and the exit summary;
- `auditing`: the runtime audit of exec'd socat processes, on its own thread.

Signals: SIGINT/SIGTERM stop cleanly with everything flushed; SIGHUP (or
`socat-monitor reload`) reloads the config file with the command-line
overrides of the start, and the policy it names.
"""

from .agent import Agent, RunOptions

__all__ = ["Agent", "RunOptions"]
