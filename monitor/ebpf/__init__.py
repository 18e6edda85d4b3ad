"""The agent's BPF objects, without bcc in the agent.

`loader`: bcc compiles, loads and attaches a program in a short-lived child,
which hands the fds back (the capture's `bpf/capture.c`, the egress guard's
`bpf/egress.c`). `maps`: a map held by fd, read and written with bpf(2).
`ring`: a BPF ring buffer read from its memory mapping. `links`: a loaded
program attached to a cgroup through a BPF link.
"""
