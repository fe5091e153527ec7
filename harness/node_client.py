"""The harness's client for a reference node's control API (the only way it talks to one).

Synchronous on purpose: suites are plain pytest functions. See
:mod:`reference_impl.node.control` for the wire format.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any


class NodeError(RuntimeError):
    """The node refused a request; ``code`` is its stable error code."""

    def __init__(self, method: str, code: str, message: str) -> None:
        super().__init__(f"{method}: {code}: {message}")
        self.method = method
        self.code = code


class NodeUnreachable(RuntimeError):
    """No node answers on the control socket."""


class NodeClient:
    """Calls methods on one reference node's control socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lines: _Lines | None = None
        self._next_id = 1

    def _connect(self, timeout: float | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise NodeUnreachable(f"no node at {self.path}: {exc.strerror or exc}") from exc
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._lines = None

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, **params: Any) -> Any:
        """Call ``method`` and return its result; raises :class:`NodeError` on refusal."""
        if self._sock is None or self._lines is None:
            self._sock = self._connect()
            self._lines = _Lines(self._sock)
        req_id = self._next_id
        self._next_id += 1
        line = json.dumps({"id": req_id, "method": method, "params": params}).encode() + b"\n"
        try:
            self._sock.sendall(line)
            response = self._lines.read()
        except OSError as exc:
            self.close()
            raise NodeUnreachable(f"node at {self.path} went away during {method}: {exc}") from exc
        if "error" in response:
            err = response["error"]
            raise NodeError(method, err.get("code", "?"), err.get("message", ""))
        return response.get("result")

    def stream(self, method: str, timeout: float | None = None, **params: Any) -> Iterator[Any]:
        """Iterate over the events of a streaming method, on a connection of its own.

        Each ``next()`` waits up to ``timeout`` seconds (``TimeoutError`` after that).
        """
        sock = self._connect(timeout)
        lines = _Lines(sock)
        try:
            sock.sendall(json.dumps({"id": 0, "method": method, "params": params}).encode() + b"\n")
            first = lines.read()
            if "error" in first:
                err = first["error"]
                raise NodeError(method, err.get("code", "?"), err.get("message", ""))
            while True:
                try:
                    message = lines.read()
                except ConnectionResetError:
                    return  # the node ended the stream
                yield message["event"]
        finally:
            sock.close()

    def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float,
        what: str,
        interval: float = 0.02,
    ) -> Any:
        """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s")
            time.sleep(interval)  # polling interval of a bounded wait, not synchronisation


class _Lines:
    """Reads newline-terminated JSON messages from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("control connection closed by the node")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message
