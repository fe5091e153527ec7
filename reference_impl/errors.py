"""Error types shared by every protocol object.

``LocalProtocolError``: we were asked to do something invalid (a bug or bad API use on our side).
``RemoteProtocolError``: the peer sent something invalid; it carries the notify type to answer
with, so the state machine can send it without guessing.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of both protocol error kinds."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid.

    ``notify`` is the IANA notify message type to answer with (IKEv2 RFC 7296 §3.10.1, or the
    ISAKMP RFC 2408 §3.14.1 type for IKEv1), or ``None`` when the datagram must be dropped
    silently.
    """

    def __init__(self, message: str, notify: int | None = None, data: bytes = b"") -> None:
        super().__init__(message)
        self.notify = notify
        self.data = data
