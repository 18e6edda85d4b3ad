"""Facts read from the host itself: everything the monitor reads from /proc and the mounts.

`processes`: a process's command line, environment, status, executable,
start time and children, the running socat processes and the installed
socat's version (the capture's process cache, the audit and the egress guard
read them here). `tcp`: a namespace's TCP tables. `listeners`: the listening
sockets of watched processes, in every network namespace. `mounts`: tracefs,
debugfs and cgroup2, mounted where missing. `facts`: what the safety rules
protect (own addresses, gateways, SSH peers).
"""
