"""The node's control API: JSON lines over a Unix stream socket.

One request per line, ``{"id": 1, "method": "list_sas", "params": {...}}``; one response per
request, ``{"id": 1, "result": ...}`` or ``{"id": 1, "error": {"code": "...", "message": "..."}}``.
A method may also stream: after its result, the server sends ``{"event": {...}}`` lines on the
same connection until the client closes it (used for the audit log).

Errors are data, never a dropped connection: unknown method -> ``no_such_method``, bad
parameters -> ``bad_params``, a handler's :class:`ControlError` -> its code, anything else ->
``internal`` (logged with its traceback on the node).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024
"""Largest request line accepted (an injected packet batch fits easily)."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], AsyncIterator[Any]]


class ControlError(Exception):
    """A handler's refusal, reported to the client with a stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlServer:
    """Serves ``handlers`` (request/response) and ``streams`` (streaming) on a Unix socket."""

    def __init__(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        streams: Mapping[str, StreamHandler] | None = None,
    ) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.streams = dict(streams or {})
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._send(
                        writer, {"id": None, "error": _error("bad_request", "line too long")}
                    )
                    return
                if not line:
                    return
                streaming = await self._dispatch(line, writer)
                if streaming is not None:
                    await self._stream(streaming, reader, writer)
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self._clients.discard(task)

    async def _dispatch(
        self, line: bytes, writer: asyncio.StreamWriter
    ) -> AsyncIterator[Any] | None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as exc:
            await self._send(writer, {"id": None, "error": _error("bad_request", str(exc))})
            return None
        req_id = request.get("id")
        method = request.get("method")
        params = request.get("params") or {}
        if not isinstance(params, dict):
            await self._send(
                writer, {"id": req_id, "error": _error("bad_params", "params must be an object")}
            )
            return None
        if method in self.streams:
            try:
                iterator = self.streams[method](params)
            except ControlError as exc:
                await self._send(writer, {"id": req_id, "error": _error(exc.code, exc.message)})
                return None
            await self._send(writer, {"id": req_id, "result": "streaming"})
            return iterator
        handler = self.handlers.get(str(method))
        if handler is None:
            known = ", ".join(sorted([*self.handlers, *self.streams]))
            message = f"no method {method!r}; methods: {known}"
            await self._send(writer, {"id": req_id, "error": _error("no_such_method", message)})
            return None
        try:
            result = await handler(params)
        except ControlError as exc:
            response: dict[str, Any] = {"id": req_id, "error": _error(exc.code, exc.message)}
        except (TypeError, KeyError, ValueError) as exc:
            response = {"id": req_id, "error": _error("bad_params", f"{type(exc).__name__}: {exc}")}
        except Exception as exc:
            log.exception("control method %s failed", method)
            response = {"id": req_id, "error": _error("internal", f"{type(exc).__name__}: {exc}")}
        else:
            response = {"id": req_id, "result": result}
        await self._send(writer, response)
        return None

    async def _stream(
        self,
        iterator: AsyncIterator[Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        # The stream ends when the iterator ends or the client closes its end.
        closed: asyncio.Future[bytes] = asyncio.ensure_future(reader.read())
        try:
            while True:
                item_task = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait(
                    {item_task, closed}, return_when=asyncio.FIRST_COMPLETED
                )
                if item_task not in done:
                    item_task.cancel()
                    return
                try:
                    item = item_task.result()
                except StopAsyncIteration:
                    return
                await self._send(writer, {"event": item})
        finally:
            closed.cancel()
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        writer.write(json.dumps(message, default=_json_default).encode() + b"\n")
        await writer.drain()


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    return str(value)
