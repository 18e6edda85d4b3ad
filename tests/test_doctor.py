"""Doctor checks on a described host (pure: paths pointed at files the test writes)."""

from __future__ import annotations

from monitor.doctor import FAIL, OK, WARN, DoctorEnv, check_privileges, check_tracepoints
from monitor.host.mounts import cgroup2_root

ALL_CAPS = "000001ffffffffff"
NO_SYS_ADMIN = f"{int(ALL_CAPS, 16) & ~(1 << 21):016x}"


def env(tmp_path, capeff: str = ALL_CAPS, filesystems: str = "nodev\ttracefs\nnodev\tdebugfs\n") -> DoctorEnv:
    (tmp_path / "status").write_text(f"Name:\tx\nCapEff:\t{capeff}\n")
    (tmp_path / "filesystems").write_text(filesystems)
    return DoctorEnv(tracing=str(tmp_path / "tracing"), debugfs=str(tmp_path / "debug"),
                     status=str(tmp_path / "status"), filesystems=str(tmp_path / "filesystems"))


def test_unmounted_tracefs_is_a_warning_when_the_agent_can_mount_it(tmp_path):
    check = check_tracepoints(env(tmp_path))
    assert check.status == WARN and "the agent mounts it at start" in check.detail
    assert check.fix == f"mount -t tracefs none {tmp_path / 'tracing'}"


def test_unmounted_tracefs_fails_without_cap_sys_admin(tmp_path):
    check = check_tracepoints(env(tmp_path, capeff=NO_SYS_ADMIN))
    assert check.status == FAIL and "CAP_SYS_ADMIN" in check.detail
    assert check.fix.startswith(f"mount -t tracefs none {tmp_path / 'tracing'}")


def test_kernel_without_tracefs_fails(tmp_path):
    check = check_tracepoints(env(tmp_path, filesystems="nodev\tproc\n"))
    assert check.status == FAIL and "no tracefs" in check.detail


def test_missing_tracepoint_is_named(tmp_path):
    e = env(tmp_path)
    (tmp_path / "tracing" / "events" / "syscalls" / "sys_enter_accept").mkdir(parents=True)
    check = check_tracepoints(e)
    assert check.status == FAIL and "sock/inet_sock_set_state" in check.detail


def test_mounted_tracefs_with_every_tracepoint_is_ok(tmp_path):
    from monitor.doctor import TRACEPOINTS

    e = env(tmp_path)
    for tp in TRACEPOINTS:
        (tmp_path / "tracing" / "events" / tp).mkdir(parents=True)
    assert check_tracepoints(e).status == OK


def caps(*bits: int) -> str:
    return f"{sum(1 << b for b in bits):016x}"


def status_env(tmp_path, capeff: str, uid: int = 0) -> DoctorEnv:
    (tmp_path / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nCapEff:\t{capeff}\n")
    return DoctorEnv(status=str(tmp_path / "status"))


def test_privileges_measured_set_is_enough(tmp_path):
    # CAP_DAC_READ_SEARCH 2, CAP_NET_ADMIN 12, CAP_SYS_PTRACE 19, CAP_PERFMON 38, CAP_BPF 39: no CAP_SYS_ADMIN
    assert check_privileges(status_env(tmp_path, caps(2, 12, 19, 38, 39))).status == OK


def test_privileges_without_ptrace_warn_about_other_users_relays(tmp_path):
    check = check_privileges(status_env(tmp_path, caps(12, 38, 39)))
    assert check.status == WARN and "other users" in check.detail
    assert "CAP_SYS_PTRACE" in check.fix and "CAP_DAC_READ_SEARCH" in check.fix


def test_privileges_without_bpf_or_root_fail(tmp_path):
    check = check_privileges(status_env(tmp_path, caps(2, 12, 19, 38)))
    assert check.status == FAIL and "CAP_BPF" in check.detail
    assert check_privileges(status_env(tmp_path, ALL_CAPS, uid=1000)).status == FAIL


def test_cgroup2_is_found_where_the_host_mounts_it(tmp_path):
    """A hybrid host keeps cgroup2 at /sys/fs/cgroup/unified; a unified one (systemd, Debian 12) at /sys/fs/cgroup."""
    table = tmp_path / "mounts"
    table.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n")
    assert cgroup2_root(str(table)) == "/sys/fs/cgroup"
    table.write_text("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert cgroup2_root(str(table)) == "/sys/fs/cgroup/unified"
    table.write_text("proc /proc proc rw 0 0\n")
    assert cgroup2_root(str(table)) is None
