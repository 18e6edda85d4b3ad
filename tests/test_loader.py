"""The loader's answer handling without BPF: fds cut off by the kernel, a socket that fails, and fds
that cannot be adopted are each one EnvironmentProblem line, and no received fd stays open."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from monitor.ebpf import loader
from monitor.errors import EnvironmentProblem

SOURCE = Path("/x/capture.c")


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_fds_the_kernel_cut_off_are_one_line_and_none_stays_open(monkeypatch):
    monkeypatch.setattr(loader, "MAX_FDS", 2)
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pipes = [os.pipe() for _ in range(3)]
    sent = [fd for pair in pipes for fd in pair]
    with sender, receiver:
        socket.send_fds(sender, [b'{"ok": true}'], sent)
        before = open_fds()
        with pytest.raises(EnvironmentProblem) as caught:
            loader._receive("capture", SOURCE, receiver)
        assert open_fds() == before                   # the two received were closed again
    for fd in sent:
        os.close(fd)
    assert "capture.c" in caught.value.message and "2" in caught.value.message
    assert "\n" not in str(caught.value)


def test_a_failing_or_silent_socket_is_one_line():
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sender, receiver:
        receiver.settimeout(0.05)
        with pytest.raises(EnvironmentProblem, match="capture.c failed: no answer from the loader"):
            loader._receive("capture", SOURCE, receiver)
    with pytest.raises(EnvironmentProblem, match="no answer from the loader .*Bad file descriptor"):
        loader._receive("capture", SOURCE, receiver)          # closed: EBADF, an OSError not a timeout


def test_fds_that_cannot_be_adopted_are_all_closed(monkeypatch):
    fds = list(os.pipe() + os.pipe())
    made = []

    def fake_map(fd: int):
        if made:
            raise OSError(1, f"bpf map fd {fd}: Operation not permitted")
        made.append(fd)
        return type("Map", (), {"fd": fd, "spec": type("Spec", (), {"name": "first"})})()

    monkeypatch.setattr(loader, "_kind", lambda fd: loader.MAP)
    monkeypatch.setattr(loader, "KernelMap", fake_map)
    with pytest.raises(EnvironmentProblem, match="cannot use the loaded BPF objects: .*Operation not permitted"):
        loader._adopt("capture", fds)
    assert made and not any(is_open(fd) for fd in fds)


def test_programs_asked_for_by_name_are_the_first_fds_and_must_be_programs(monkeypatch):
    fds = list(os.pipe() + os.pipe())
    kinds = {fds[0]: loader.PROGRAM, fds[1]: loader.PROGRAM, fds[2]: loader.ATTACHMENT[1], fds[3]: loader.PROGRAM}
    monkeypatch.setattr(loader, "_kind", kinds.__getitem__)
    loaded = loader._adopt("egress", fds, ["connect4", "connect6"])
    assert loaded.programs == {"connect4": fds[0], "connect6": fds[1]} and loaded.held == [fds[2], fds[3]]
    loaded.close()
    assert not any(is_open(fd) for fd in fds)


def test_a_named_program_missing_from_the_answer_is_one_line_and_every_fd_closed(monkeypatch):
    fds = list(os.pipe())
    monkeypatch.setattr(loader, "_kind", {fds[0]: loader.PROGRAM, fds[1]: loader.ATTACHMENT[0]}.__getitem__)
    with pytest.raises(EnvironmentProblem, match="the loader's answer lacks the programs connect4, connect6"):
        loader._adopt("egress", fds, ["connect4", "connect6"])
    assert not any(is_open(fd) for fd in fds)
