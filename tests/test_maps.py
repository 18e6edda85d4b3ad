"""bpf(2)'s syscall number is the machine's: x86_64's and aarch64's are known; on any other machine the
first map access is one EnvironmentProblem line, not a wrong syscall."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.ebpf import loader, maps
from monitor.host import syscalls
from monitor.errors import EnvironmentProblem


@pytest.mark.parametrize("machine, number", [("x86_64", 321), ("aarch64", 280)])
def test_the_number_is_the_machines(monkeypatch, machine, number):
    monkeypatch.setattr(syscalls.platform, "machine", lambda: machine)
    assert syscalls.sys_bpf() == number


def test_another_machine_is_one_line_before_any_syscall(monkeypatch):
    monkeypatch.setattr(syscalls.platform, "machine", lambda: "riscv64")
    with pytest.raises(EnvironmentProblem, match="riscv64: .*only on x86_64 and aarch64") as caught:
        maps.KernelMap(0)
    assert caught.value.exit_code == 3 and "\n" not in str(caught.value)


def test_the_loader_refuses_another_machine_before_starting_a_child(monkeypatch):
    monkeypatch.setattr(syscalls.platform, "machine", lambda: "ppc64le")
    monkeypatch.setattr(loader, "python_child", lambda *args, **kwargs: pytest.fail("a child was started"))
    with pytest.raises(EnvironmentProblem, match="ppc64le"):
        loader.load("capture", Path("/x/capture.c"), [], {})
