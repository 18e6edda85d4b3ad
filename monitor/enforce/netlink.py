"""nftables set-element batches, and cheap looks at a table, on a raw netfilter netlink socket.

One `send` is one kernel transaction: BATCH_BEGIN, the NEWSETELEM and
DELSETELEM messages (each asking for an ack), BATCH_END, then exactly one
NLMSG_ERROR per acked message back (0 = done). A batch the kernel rejects
as a whole (no CAP_NET_ADMIN) is answered on BATCH_BEGIN. Built with struct
on a plain socket: a block costs one sendmsg and one recv, about a tenth of
what a general netlink library's asynchronous batch machinery costs. The
socket belongs to the network namespace of the thread that opens it.

`table_shape` asks for one table and its chain's rules only: libnftables
(nft 1.0.6) fetches every set element for any listing, 6 s with 100,000
blocks, far too slow for a check every half second.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterable, Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_GETTABLE, NFT_MSG_GETRULE = 1, 7
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_TABLE_NAME, NFTA_TABLE_USE, NFTA_TABLE_HANDLE, NFTA_TABLE_USERDATA = 1, 3, 4, 6
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE = 1, 2, 3
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


def attributes(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Top-level netlink attributes from `offset` on: type (flags masked) -> payload."""
    out: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, offset)
        if size < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4: offset + size]
        offset += (size + 3) & ~3
    return out


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

    def _received(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(kind, sequence number, error code or 0, the whole message) of every message the socket
        receives next, one recv at a time (the caller stops when it has what it waits for)."""
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0] if kind == NLMSG_ERROR else 0
                yield kind, seq, code, data[offset:offset + length]
                offset += (length + 3) & ~3 if length else len(data)

    def _acks(self, begin: int, waiting: set[int]) -> int:
        """Read acks until every message is answered; the first error (positive errno) or 0."""
        error = 0
        if not waiting:
            return error
        for kind, seq, code, _ in self._received():
            if kind != NLMSG_ERROR:
                continue
            if seq == begin and code:   # the whole batch refused
                return code
            if seq in waiting:
                waiting.discard(seq)
                error = error or code
                if not waiting:
                    return error
        return error

    def _request(self, msg_type: int, flags: int, attrs: bytes) -> list[dict[int, bytes]]:
        """One GET request; the attributes of every answer (a dump ends with NLMSG_DONE). OSError if refused."""
        seq = self._next()
        kind = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
        self._sock.send(_message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, NFPROTO_INET, 0, attrs))
        answers: list[dict[int, bytes]] = []
        for kind, got, code, message in self._received():
            if got != seq:
                continue
            if code:
                raise OSError(code, os.strerror(code))
            if kind in (NLMSG_ERROR, NLMSG_DONE):
                return answers
            answers.append(attributes(message, _HEADER.size + _NFGEN.size))
        return answers

    def table_shape(self, table: str, chain: str) -> tuple[int, int, bytes, tuple[int, ...]] | None:
        """(handle, use count, user data, rule handles of `chain`) of a table; None if there is none.

        A table made again has a new handle; sets, chains or objects added or
        removed change its use count; rules changed change the rule handles."""
        name = nla(NFTA_TABLE_NAME, table.encode() + b"\0")
        try:
            found = self._request(NFT_MSG_GETTABLE, 0, name)
        except FileNotFoundError:
            return None
        attrs = found[0]
        rules = self._request(NFT_MSG_GETRULE, NLM_F_DUMP, name + nla(NFTA_RULE_CHAIN, chain.encode() + b"\0"))
        return (struct.unpack(">Q", attrs[NFTA_TABLE_HANDLE])[0], struct.unpack(">I", attrs[NFTA_TABLE_USE])[0],
                attrs.get(NFTA_TABLE_USERDATA, b""),
                tuple(struct.unpack(">Q", r[NFTA_RULE_HANDLE])[0] for r in rules if NFTA_RULE_HANDLE in r))

    def close(self) -> None:
        self._sock.close()
