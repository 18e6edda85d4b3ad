"""nftables set-element batches on a raw netfilter netlink socket.

One `send` is one kernel transaction: BATCH_BEGIN, the NEWSETELEM and
DELSETELEM messages (each asking for an ack), BATCH_END, then exactly one
NLMSG_ERROR per acked message back (0 = done). A batch the kernel rejects
as a whole (no CAP_NET_ADMIN) is answered on BATCH_BEGIN. Built with struct
on a plain socket: a block costs one sendmsg and one recv, about a tenth of
what a general netlink library's asynchronous batch machinery costs. The
socket belongs to the network namespace of the thread that opens it.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterable

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
NLMSG_ERROR = 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFPROTO_INET = 1
SO_SNDBUFFORCE = 32
SEND_BUFFER = 8 << 20            # a 100,000-element batch is about 3 MB
_HEADER = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")   # family, version, res_id (big-endian on the wire)


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _message(msg_type: int, flags: int, seq: int, family: int, res_id: int, payload: bytes = b"") -> bytes:
    body = _NFGEN.pack(family, 0, socket.htons(res_id)) + payload
    return _HEADER.pack(_HEADER.size + len(body), msg_type, flags, seq, 0) + body


class ElementSocket:
    """A netfilter netlink socket sending element batches and waiting for their acks."""

    def __init__(self, timeout_s: float) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SEND_BUFFER)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self._sock.bind((0, 0))
        self._sock.settimeout(timeout_s)
        self._seq = 0

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def send(self, table: str, steps: Iterable[tuple[bool, str, bytes]]) -> None:
        """One transaction of (add?, set, encoded NFTA_LIST_ELEMs) steps; OSError(errno) if refused."""
        begin = self._next()
        parts = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0, NFNL_SUBSYS_NFTABLES)]
        waiting: set[int] = set()
        for add, set_name, elements in steps:
            seq = self._next()
            waiting.add(seq)
            kind = (NFNL_SUBSYS_NFTABLES << 8) | (NFT_MSG_NEWSETELEM if add else NFT_MSG_DELSETELEM)
            flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if add else 0)
            attrs = (nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
                     + nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
                     + nla(NFTA_SET_ELEM_LIST_ELEMENTS, elements))
            parts.append(_message(kind, flags, seq, NFPROTO_INET, 0, attrs))
        parts.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self._next(), 0, NFNL_SUBSYS_NFTABLES))
        self._sock.send(b"".join(parts))
        error = self._acks(begin, waiting)
        if error:
            raise OSError(error, os.strerror(error))

    def _acks(self, begin: int, waiting: set[int]) -> int:
        """Read acks until every message is answered; the first error (positive errno) or 0."""
        error = 0
        while waiting:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                    if seq == begin and code:   # the whole batch refused
                        return code
                    if seq in waiting:
                        waiting.discard(seq)
                        error = error or code
                offset += (length + 3) & ~3 if length else len(data)
        return error

    def close(self) -> None:
        self._sock.close()
