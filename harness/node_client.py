"""The harness's client for a reference node's control API (the only way it talks to one).

Synchronous on purpose: suites are plain pytest functions. See
:mod:`reference_impl.node.control` for the wire format.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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

    # --- typed methods (one per control method; see ``methods()``) ----------------------------

    def methods(self) -> dict[str, str]:
        """Every control method the node offers, with its description."""
        result: dict[str, str] = self.call("methods")
        return result

    def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("ping")
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def wait_ready(self, timeout: float = 15.0, alive: Callable[[], bool] | None = None) -> None:
        """Wait until the node answers ``ping`` (it binds its control socket last)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ping()
                return
            except (NodeUnreachable, OSError):
                self.close()
            if alive is not None and not alive():
                raise NodeUnreachable(f"the node at {self.path} exited before it was ready")
            if time.monotonic() >= deadline:
                raise NodeUnreachable(f"no node at {self.path} after {timeout:g} s")
            time.sleep(0.02)  # polling interval of a bounded wait

    def load_policy(self, *, path: str | None = None, text: str | None = None) -> dict[str, Any]:
        """Load or replace the policy (a file on the node's host, or YAML text)."""
        params = {"text": text} if text is not None else {"path": path}
        result: dict[str, Any] = self.call("load_policy", **params)
        return result

    def get_policy(self) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.call("get_policy")
        return result

    def set_credentials(self, **credentials: Any) -> dict[str, Any]:
        """Replace credentials (the ``credentials`` section of a node configuration)."""
        result: dict[str, Any] = self.call("set_credentials", **credentials)
        return result

    def set_ike(self, **ike: Any) -> dict[str, Any]:
        """Replace IKE settings (the ``ike`` section, ports excepted)."""
        result: dict[str, Any] = self.call("set_ike", **ike)
        return result

    def initiate(self, rule: str, *, peer: str | None = None, version: int | None = None) -> str:
        """Start IKE for a policy rule now; returns the IKE SA ID (hex)."""
        params: dict[str, Any] = {"rule": rule}
        if peer is not None:
            params["peer"] = peer
        if version is not None:
            params["version"] = version
        return str(self.call("initiate", **params)["ike_sa_id"])

    def terminate(self, ike_sa_id: str | None = None) -> int:
        params = {"ike_sa_id": ike_sa_id} if ike_sa_id else {}
        return int(self.call("terminate", **params)["deleted"])

    def rekey_child(self, spi: int) -> None:
        self.call("rekey_child", spi=spi)

    def delete_child(self, spi: int) -> None:
        self.call("delete_child", spi=spi)

    def rekey_ike(self, ike_sa_id: str) -> None:
        self.call("rekey_ike", ike_sa_id=ike_sa_id)

    def liveness_check(self, ike_sa_id: str) -> None:
        self.call("liveness_check", ike_sa_id=ike_sa_id)

    def list_sas(self, keys: bool = False) -> dict[str, Any]:
        """``{"ike_sas": [...], "child_sas": [...]}`` (shape: /work/notes/oracle-keys.md)."""
        result: dict[str, Any] = self.call("list_sas", keys=keys)
        return result

    def counters(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("counters")
        return result

    def agent_state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("agent_state")
        return result

    def audit(
        self, since: float | None = None, kinds: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if kinds is not None:
            params["kinds"] = list(kinds)
        result: list[dict[str, Any]] = self.call("audit", **params)
        return result

    def audit_stream(
        self, *, history: bool = False, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Audit records as the node writes them (a connection of its own)."""
        return self.stream("audit_stream", timeout=timeout, history=history)

    def events(self, since: float | None = None) -> list[dict[str, Any]]:
        params = {"since": since} if since is not None else {}
        result: list[dict[str, Any]] = self.call("events", **params)
        return result

    def driver_audit(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("driver_audit")
        return result

    def inject(self, packets: Iterable[bytes], direction: str = "out") -> int:
        """Hand IP packets to the node: ``out`` from its local stack, ``in`` from the wire."""
        hexed = [p.hex() for p in packets]
        return int(self.call("inject", packets=hexed, direction=direction)["injected"])

    def delivered(self, limit: int | None = None, peek: bool = False) -> list[Delivered]:
        """Packets the node delivered to its local stack (api data plane), oldest first;
        taken from the node's buffer unless ``peek``."""
        items = self.call("delivered", max=limit, peek=peek)
        return [
            Delivered(i["time"], i["protected"], i["spi"], bytes.fromhex(i["packet"]))
            for i in items
        ]

    def clock(self, mode: str | None = None) -> dict[str, Any]:
        params = {"mode": mode} if mode is not None else {}
        result: dict[str, Any] = self.call("clock", **params)
        return result

    def advance(self, seconds: float) -> float:
        """Virtual clock: run the node's timers for ``seconds``; returns its new time."""
        return float(self.call("advance", seconds=seconds)["now"])

    def misbehave(self, name: str, value: Any = True) -> dict[str, Any]:
        result: dict[str, Any] = self.call("misbehave", name=name, value=value)
        return result

    def misbehaviours(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("misbehaviours")
        return result

    def set_next_seq(self, spi: int, seq: int) -> None:
        self.call("set_next_seq", spi=spi, seq=seq)

    def send_dummy(self, spi: int, length: int = 0) -> None:
        self.call("send_dummy", spi=spi, length=length)

    def record_received(self, on: bool = True, capacity: int = 4096) -> bool:
        """Start (or with ``on=False`` stop) recording the ESP/AH datagrams the node
        receives: the harness's view of what the other end sent (see :meth:`received`)."""
        return bool(self.call("record_received", on=on, capacity=capacity)["recording"])

    def received(self, limit: int | None = None, peek: bool = False) -> list[Received]:
        """ESP/AH datagrams received since recording began, oldest first; taken from the
        node's buffer unless ``peek``."""
        items = self.call("received", max=limit, peek=peek)
        return [
            Received(i["time"], bytes.fromhex(i["packet"]), tuple(i["udp"]) if i["udp"] else None)
            for i in items
        ]

    def shutdown(self) -> None:
        """Ask the node to stop gracefully (Deletes sent, device and routes removed)."""
        try:
            self.call("shutdown")
        except NodeUnreachable:
            pass
        self.close()


@dataclass(frozen=True)
class Delivered:
    """One packet a node delivered to its local stack."""

    time: float
    protected: bool
    """Arrived under ESP/AH (False: accepted in clear)."""
    spi: int | None
    packet: bytes


@dataclass(frozen=True)
class Received:
    """One ESP/AH datagram a node received."""

    time: float
    data: bytes
    """The IP datagram (raw ESP/AH), or the UDP payload (ESP in UDP, RFC 3948)."""
    udp: tuple[str, int, str, int] | None
    """ESP in UDP: (source address, source port, local address, local port)."""


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
