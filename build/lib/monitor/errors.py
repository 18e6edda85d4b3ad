"""Errors that reach the user, and the exit codes scripts can rely on.

Raise `InputError` for anything the user gave us that is wrong (a file, a
flag, a line of input): it carries where the problem is and renders as one
line. Raise `EnvironmentProblem` when the host cannot do what was asked
(no BPF, no CAP_NET_ADMIN, no server). The CLI edge prints either once and
exits with the matching code; nothing else logs them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1       # the command worked and found something (alerts, audit findings, doctor problems)
EXIT_USAGE = 2          # bad flags, bad files, bad input
EXIT_ENVIRONMENT = 3    # the host cannot run this (missing kernel feature, permission, server)
EXIT_INTERNAL = 70      # a bug in socat-monitor (EX_SOFTWARE)


class MonitorError(Exception):
    exit_code = EXIT_USAGE

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


class InputError(MonitorError):
    """Bad user input: names the problem and where it is (file:line: key: ...)."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(MonitorError):
    """The host lacks something the command needs; `fix` says how to get it."""

    exit_code = EXIT_ENVIRONMENT

    def __init__(self, where: str, message: str, fix: str | None = None):
        super().__init__(where, message + (f" (fix: {fix})" if fix else ""))
        self.fix = fix
