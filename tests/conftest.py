"""Shared fixtures: real processes and namespaces, cleaned up by what we started."""

from __future__ import annotations

import os
import signal

import pytest

from tests.lab import Namespaces, Processes


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.stop_all()


@pytest.fixture
def netns():
    ns = Namespaces()
    yield ns
    ns.remove_all()


@pytest.fixture(scope="session", autouse=True)
def _must_be_root():
    if os.geteuid() != 0:
        pytest.exit("the test suite runs as root (BPF, nftables, namespaces): sudo scripts/test.sh", returncode=4)


def pytest_configure(config):
    """A suite started in the background (`cmd &` without job control, nohup) inherits SIGINT ignored,
    and so would every process it starts: a shell cannot even trap it then. The tests that press
    Ctrl-C on the demo or `top` need what a terminal gives them."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
