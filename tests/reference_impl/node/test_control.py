"""The control API: request/response, errors as data, streaming, over a real Unix socket."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.node_client import NodeClient, NodeError, NodeUnreachable
from reference_impl.node.control import ControlError, ControlServer


class ServerThread:
    """Runs a ControlServer on its own event loop in a thread, for a synchronous client."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.events: asyncio.Queue[Any] | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def echo(self, params: dict[str, Any]) -> Any:
        return params

    async def refuse(self, params: dict[str, Any]) -> Any:
        raise ControlError("no_such_sa", "no SA with SPI 0x1")

    async def crash(self, params: dict[str, Any]) -> Any:
        raise RuntimeError("handler bug")

    async def audit(self, params: dict[str, Any]) -> AsyncIterator[Any]:
        assert self.events is not None
        for i in range(int(params.get("count", 3))):
            yield {"n": i, "kind": await self.events.get()}

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.events = asyncio.Queue()
        server = ControlServer(
            self.path,
            {"echo": self.echo, "refuse": self.refuse, "crash": self.crash},
            {"audit": self.audit},
        )
        self.loop.run_until_complete(server.start())
        self.server = server
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(server.close())
        self.loop.close()

    def push(self, item: Any) -> None:
        assert self.events is not None
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(str(tmp_path / "ctl.sock"))
    srv.thread.start()
    assert srv.ready.wait(10)
    yield srv
    srv.stop()
    assert not Path(srv.path).exists(), "socket file left behind"


def test_request_response(server: ServerThread) -> None:
    with NodeClient(server.path) as client:
        assert client.call("echo", a=1, b=[1, 2]) == {"a": 1, "b": [1, 2]}
        assert client.call("echo") == {}


def test_errors_are_data(server: ServerThread) -> None:
    with NodeClient(server.path) as client:
        with pytest.raises(NodeError) as refused:
            client.call("refuse")
        assert refused.value.code == "no_such_sa"
        with pytest.raises(NodeError) as unknown:
            client.call("nope")
        assert unknown.value.code == "no_such_method"
        assert "echo" in str(unknown.value)
        with pytest.raises(NodeError) as crashed:
            client.call("crash")
        assert crashed.value.code == "internal"
        # The connection survives every error.
        assert client.call("echo", x=1) == {"x": 1}


def test_garbage_line_gets_an_error(server: ServerThread) -> None:
    import json
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.path)
        s.sendall(b"this is not json\n")
        reply = json.loads(s.makefile().readline())
    assert reply["error"]["code"] == "bad_request"


def test_stream(server: ServerThread) -> None:
    client = NodeClient(server.path)
    events = client.stream("audit", timeout=5, count=2)
    server.push("fallback")
    server.push("discard")
    assert next(events) == {"n": 0, "kind": "fallback"}
    assert next(events) == {"n": 1, "kind": "discard"}
    with pytest.raises(StopIteration):
        next(events)


def test_unreachable(tmp_path: Path) -> None:
    with pytest.raises(NodeUnreachable, match="no node at"):
        NodeClient(str(tmp_path / "absent.sock")).call("echo")
