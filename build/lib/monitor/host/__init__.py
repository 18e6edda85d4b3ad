"""Facts read from the host itself: /proc and the network namespace.

`listeners` finds the listening sockets of watched processes (in every
network namespace); `facts` gathers what the safety rules protect (own
addresses, gateways, SSH peers).
"""
