"""The node's asyncio shell: sockets, TUN, timers, control API, signals, logs.

Everything protocol-related is in the sans-I/O :class:`~reference_impl.node.host.Host`; this
module only moves bytes and time in and out of it:

* UDP sockets on the IKE and NAT-T ports (``IP_RECVERR``: ICMP errors about our datagrams are
  read from the error queue and handed to the host as unauthenticated hints, policy-spec E7);
* the data plane (:mod:`reference_impl.node.dataplane`): TUN + raw sockets, or the api plane;
* one timer, armed at ``host.get_timer()`` (real clock) or driven by the harness (virtual
  clock: ``advance``);
* the control API (:mod:`reference_impl.node.control`), methods in :data:`METHODS`;
* SIGTERM/SIGINT: Delete notifications sent, device, routes and rules removed, exit 0.

Reads are batched (up to 256 datagrams per readiness callback, until ``EAGAIN``) and the
host's outputs are flushed once per batch; a packet costs one read, one classification (a
flow-cache lookup once established), one protect or unprotect, and one write. Nothing is
logged per packet; drops are counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from reference_impl.driver import Verdict
from reference_impl.errors import LocalProtocolError
from reference_impl.node import config as nconfig
from reference_impl.node import sadump
from reference_impl.node.config import ConfigError, NodeConfig, parse_endpoint
from reference_impl.node.control import ControlError, ControlServer
from reference_impl.node.dataplane import ApiPlane, DataPlane, TunPlane
from reference_impl.node.host import MISBEHAVIOURS, Host, HostSettings, PortMap
from reference_impl.node.offload import NO_VNET, VNET_LEN, read_offloaded
from reference_impl.node.udp import MAX_SEGMENTS, UdpEndpoint
from reference_impl.policy import PolicyValidationError

log = logging.getLogger("reference_impl.node")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_ENVIRONMENT = 3


class Clock:
    """Monotonic seconds, real or virtual (advanced by the harness); never goes back."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._offset = 0.0
        self._virtual = time.monotonic()

    def now(self) -> float:
        if self.mode == "virtual":
            return self._virtual
        return time.monotonic() + self._offset

    def set_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        if mode == "virtual":
            self._virtual = self.now()
        else:
            self._offset = max(0.0, self._virtual - time.monotonic())
        self.mode = mode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(cfg: nconfig.LoggingModel, name: str) -> None:
    root = logging.getLogger("reference_impl")
    root.setLevel(cfg.level.upper())
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt: logging.Formatter = (
        JsonFormatter()
        if cfg.format == "json"
        else logging.Formatter(f"%(asctime)s {name} %(levelname)s %(message)s")
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if cfg.file is not None:
        handlers.append(logging.FileHandler(cfg.file))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)


class NodeRuntime:
    """One running node (see the module docstring)."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.clock = Clock(cfg.clock)
        creds = nconfig.credentials(cfg.credentials)
        ov = nconfig.overrides(cfg.ike)
        self.counters: dict[str, int] = {}
        self.host = Host(
            HostSettings(
                addresses=tuple(cfg.addresses),
                local_addresses=tuple(dict.fromkeys([*cfg.addresses, *cfg.inner_addresses])),
                ports=PortMap(
                    cfg.ike.port or 500,
                    cfg.ike.natt_port or 4500,
                    {a: (p[0], p[1]) for a, p in cfg.ike.peers.items()},
                ),
                credentials=creds,
                overrides=ov,
                record_deliveries=cfg.dataplane.mode == "api",
            ),
            self.clock.now(),
        )
        self.host.on_event = self._host_event
        if cfg.policy is not None:
            self.host.load_policy(cfg.policy, self.clock.now())
        self.udp: dict[tuple[str, int], UdpEndpoint] = {}
        self.plane: DataPlane | None = None
        self.control: ControlServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stop = asyncio.Event()
        self._readers: list[int] = []
        self.started = time.time()
        self.wire_log: deque[tuple[float, bytes, tuple[str, int, str, int] | None]] | None = None
        """ESP and AH as they arrived, while the harness records them (``record_received``):
        raw datagrams, and ESP-in-UDP payloads with (source, port, local address, port)."""

    # ------------------------------------------------------------------------------ start/stop

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        cfg = self.cfg
        mark = cfg.dataplane.mark if cfg.dataplane.mode == "tun" else 0
        ports = []
        if "ike" in cfg.ike.listen and cfg.ike.port:
            ports.append(cfg.ike.port)
        if "natt" in cfg.ike.listen and cfg.ike.natt_port:
            ports.append(cfg.ike.natt_port)
        for addr in cfg.addresses:
            for port in ports:
                ep = UdpEndpoint(addr, port, mark=mark)
                self.udp[(addr, ep.port)] = ep
                if port == cfg.ike.natt_port and cfg.dataplane.udp_offload:
                    ep.enable_gro()
                else:
                    ep.gso = False
                self._add_reader(ep.fileno(), self._udp_reader(ep))
        dp = cfg.dataplane
        if dp.mode == "tun":
            tun = TunPlane(
                name=dp.tun_name,
                mtu=dp.mtu,
                table=dp.table,
                mark=dp.mark,
                priority=dp.rule_priority,
                raw_esp=dp.raw_esp,
                on_ip=self._on_wire_ip,
                counters=self.counters,
                offload=dp.offload,
                tso=dp.tso,
                on_clear=self._clear_decision if dp.inbound_clear_check else None,
                ike_ports=ports,
            )
            self.plane = tun
            self._add_reader(tun.tun.fd, self._tun_reader(tun))
            self._update_routes()
        else:
            peers = {p: parse_endpoint(ep) for p, ep in dp.clear_peers.items()}
            self.plane = ApiPlane(
                address=cfg.addresses[0],
                clear_port=dp.clear_port,
                clear_peers=peers,
                capacity=dp.delivered_capacity,
                on_ip=self._on_wire_ip,
                counters=self.counters,
            )
        for fd, cb in self.plane.readers():
            self._add_reader(fd, self._batched(cb))
        self.control = ControlServer(str(cfg.control.socket), METHODS_BOUND(self), STREAMS(self))
        await self.control.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._flush()
        log.info(
            "node ready",
            extra={
                "fields": {
                    "event": "ready",
                    "node": cfg.name,
                    "control": str(cfg.control.socket),
                    "udp": [f"{a}:{p}" for a, p in self.udp],
                    "dataplane": self.plane.status(),
                    "policy": self.host.policy.policy.name if self.host.policy else None,
                    "pid": os.getpid(),
                }
            },
        )

    def _add_reader(self, fd: int, cb: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.add_reader(fd, cb)
        self._readers.append(fd)

    async def run(self) -> int:
        try:
            await self.start()
        except OSError as exc:
            log.error("cannot start: %s", exc, extra={"fields": {"event": "start_failed"}})
            await self.close()
            return EXIT_ENVIRONMENT
        await self._stop.wait()
        log.info("stopping", extra={"fields": {"event": "stopping"}})
        self.host.shutdown(self.clock.now())
        self._flush()
        # Let the peers' answers to our Deletes arrive (they are not required).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._quiet(), 0.5)
        await self.close()
        log.info("stopped", extra={"fields": {"event": "stopped"}})
        return EXIT_OK

    async def _quiet(self) -> None:
        while any(sa.established for sa in self.host.ike2.ike_sas()):
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None:
            for fd in self._readers:
                self._loop.remove_reader(fd)
        self._readers.clear()
        for ep in self.udp.values():
            ep.close()
        self.udp.clear()
        if self.plane is not None:
            self.plane.close()
        if self.control is not None:
            await self.control.close()

    def stop(self) -> None:
        self._stop.set()

    # -------------------------------------------------------------------------------- inputs

    def _udp_reader(self, ep: UdpEndpoint) -> Callable[[], None]:
        recvfrom = ep.sock.recvfrom
        local = (ep.address, ep.port)
        host = self.host
        natt = ep.port == self.cfg.ike.natt_port

        recv_gro = ep.recv_gro

        def read() -> None:
            now = self.clock.now()
            errors = False
            received = 0
            for received in range(256):  # noqa: B007 - how many rounds read something
                if ep.gro:
                    try:
                        got = recv_gro()
                    except OSError:
                        errors = True
                        continue
                    if got is None:
                        break
                    buf, seg, addr = got
                    if seg and len(buf) > seg:
                        # UDP GRO: one buffer, several datagrams of ``seg`` octets.
                        src = (addr[0], addr[1])
                        wire = self.wire_log
                        if wire is not None:
                            for off in range(0, len(buf), seg):
                                piece = buf[off : off + seg]
                                if len(piece) >= 8 and piece[:4] != b"\0\0\0\0":
                                    wire.append((now, piece, (*src, *local)))
                        host.udp_esp_received(buf, seg, src, local, now)
                        continue
                    data = buf
                else:
                    try:
                        data, addr = recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        errors = True  # an ICMP error is pending: it is in the error queue too
                        continue
                if (
                    natt
                    and self.wire_log is not None
                    and len(data) >= 8
                    and data[:4] != b"\0\0\0\0"
                ):
                    self.wire_log.append((now, data, (addr[0], addr[1], local[0], local[1])))
                host.udp_received(data, (addr[0], addr[1]), local, now)
            # Drain the error queue after a failed receive, and also when a send consumed the
            # pending-error report or the wake-up brought nothing to read: then only the queue
            # is left, and its EPOLLERR would wake this reader again and again.
            if errors or ep.errors_possible or not received:
                for e in ep.recv_errors():
                    host.icmp_error(
                        e.destination, ep.port, e.icmp_type, e.icmp_code, e.payload, e.offender,
                        now,
                    )  # fmt: skip
            host.poll(now)
            self._flush()

        return read

    def _tun_reader(self, tun: TunPlane) -> Callable[[], None]:
        fd = tun.tun.fd
        read = os.read
        host = self.host
        outbound = host.outbound_packet
        vnet = tun.tun.vnet
        counters = self.counters
        # The established-flow path, inlined: flow cache -> protect -> raw send (the host's
        # cache, cleared by the host whenever its decision may change; SAs whose ESP goes in
        # UDP, and deliberate ICV corruption, take the host's general path).
        fast = host._fast
        routes = host._udp_routes
        raw_send = tun.out4.sendto
        dst_of: dict[object, tuple[str, int]] = {}
        delivered = Verdict.DELIVERED

        def reader() -> None:
            now = self.clock.now()
            for _ in range(256):
                try:
                    data = read(fd, 65600)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    counters["tun.read_errors"] = counters.get("tun.read_errors", 0) + 1
                    break
                if vnet:
                    if data[:VNET_LEN] == NO_VNET:
                        pkt = data[VNET_LEN:]
                    else:
                        segments = read_offloaded(data)
                        if len(segments) > 1:
                            counters["tun.tso_segments"] = counters.get(
                                "tun.tso_segments", 0
                            ) + len(segments)
                        for seg in segments:
                            outbound(seg, now)
                        continue
                else:
                    pkt = data
                if len(pkt) >= 24 and pkt[0] == 0x45:
                    cache = fast.get(pkt[9])
                    sa = cache.get(pkt[12:24]) if cache is not None else None
                    if sa is not None and not host._corrupt and id(sa) not in routes:
                        v, out = sa.protect(pkt, now)
                        if v is delivered:
                            dst = dst_of.get(sa)
                            if dst is None:
                                if len(dst_of) > 1024:
                                    dst_of.clear()
                                dst = dst_of[sa] = (sa.params.dst, 0)
                            try:
                                raw_send(out, dst)
                            except OSError:
                                counters["raw.send_errors"] = counters.get("raw.send_errors", 0) + 1
                            continue
                elif len(pkt) < 20 or (pkt[0] >> 4 == 6 and (pkt[8] == 0xFE or pkt[24] == 0xFF)):
                    continue  # link-local or multicast IPv6 of the TUN link itself
                outbound(pkt, now)
            host.poll(now)
            self._flush()

        return reader

    def _batched(self, cb: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            cb()
            self.host.poll(self.clock.now())
            self._flush()

        return run

    def _clear_decision(self, packet: bytes) -> bool:
        """A clear packet the kernel queued (tun data plane): deliver it or not."""
        return self.host.clear_inbound(packet, self.clock.now())

    def _on_wire_ip(self, packet: bytes) -> None:
        if self.wire_log is not None and len(packet) >= 20:
            proto = packet[9] if packet[0] >> 4 == 4 else packet[6]
            if proto in (50, 51):
                self.wire_log.append((self.clock.now(), packet, None))
        self.host.raw_received(packet, self.clock.now())

    # ------------------------------------------------------------------------------- outputs

    def _flush(self) -> None:
        host = self.host
        if host.udp_out:
            self._send_udp(host.udp_out)
            host.udp_out.clear()
        plane = self.plane
        if host.ip_out:
            if plane is not None:
                send = plane.send_ip
                for pkt in host.ip_out:
                    send(pkt)
            host.ip_out.clear()
        if host.delivered:
            if plane is not None:
                plane.deliver_many(host.delivered, host.delivered_info)
            host.delivered.clear()
            host.delivered_info.clear()
        if host.timer_dirty:
            self._arm_timer()

    def _send_udp(self, out: list[tuple[bytes, tuple[str, int], tuple[str, int]]]) -> None:
        """Send the host's datagrams; runs of equal-sized ones to one peer (ESP-in-UDP of a
        bulk transfer) leave with one system call each (UDP GSO), the rest one by one."""
        udp = self.udp
        i = 0
        n = len(out)
        while i < n:
            data, src, dst = out[i]
            ep = udp.get(src)
            if ep is None:
                ep = next((e for (a, p), e in udp.items() if p == src[1]), None)
            if ep is None:
                self.counters["udp.no_socket"] = self.counters.get("udp.no_socket", 0) + 1
                i += 1
                continue
            size = len(data)
            j = i + 1
            if ep.gso and size > 64:
                total = size
                while (
                    j < n
                    and j - i < MAX_SEGMENTS
                    and out[j][2] == dst
                    and out[j][1] == src
                    and len(out[j][0]) <= size
                    and total + len(out[j][0]) <= 65000
                ):
                    total += len(out[j][0])
                    j += 1
                    if len(out[j - 1][0]) < size:
                        break  # only the last segment may be shorter
            if j - i > 1 and ep.send_segments(b"".join(d for d, _, _ in out[i:j]), size, dst):
                self.counters["udp.gso_sends"] = self.counters.get("udp.gso_sends", 0) + 1
                i = j
                continue
            ep.send(data, dst)
            i += 1

    def _arm_timer(self) -> None:
        self.host.timer_dirty = False
        if self._loop is None or self.clock.mode == "virtual":
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        t = self.host.get_timer()
        if t == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = t
        if t is not None:
            delay = max(0.0, t - self.clock.now())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.host.handle_timer(self.clock.now())
        self.host.timer_dirty = True
        self._flush()

    def advance(self, seconds: float) -> float:
        """Virtual clock: run every timer due within ``seconds``, in order, then move on."""
        target = self.clock.now() + seconds
        for _ in range(1_000_000):
            t = self.host.get_timer()
            if t is None or t > target:
                break
            self.clock._virtual = max(self.clock._virtual, t)
            self.host.handle_timer(self.clock.now())
            self._flush()
        self.clock._virtual = max(self.clock._virtual, target)
        self._flush()
        return self.clock.now()

    def _host_event(self, now: float, kind: str, fields: dict[str, Any]) -> None:
        log.info(kind, extra={"fields": {"event": kind, "t": now, **fields}})

    def _update_routes(self) -> None:
        """``tun``: route the remote side of every PROTECT entry into the tunnel table."""
        if not isinstance(self.plane, TunPlane):
            return
        dp = self.cfg.dataplane
        want: list[tuple[str, str | None]] = []
        if dp.routes != "auto":
            want = [(str(ipaddress.ip_network(r, strict=False)), None) for r in dp.routes]
        elif self.host.policy is not None:
            locals_ = [ipaddress.ip_address(a) for a in self.host.settings.local_addresses]
            for e in self.host.policy.spd.outbound:
                if e.action.value != "protect":
                    continue
                src = next(
                    (str(a) for a in locals_ if e.local.contains(a.version, int(a))
                     and str(a) in self.cfg.inner_addresses),
                    None,
                )  # fmt: skip
                for net in ipaddress.summarize_address_range(e.remote.first, e.remote.last):
                    want.append((str(net), src))
        self.plane.update_routes(want)

    # ------------------------------------------------------------------------------- control

    def now(self) -> float:
        return self.clock.now()

    def after(self) -> None:
        self.host.timer_dirty = True
        self._flush()


# ====================================================================================== control


def _spi(params: dict[str, Any], key: str = "spi") -> int:
    v = params[key]
    if isinstance(v, str):
        return int(v, 16)
    return int(v)


def _ike_sa_id(params: dict[str, Any]) -> bytes:
    return bytes.fromhex(str(params["ike_sa_id"]))


def _protocol_error(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(params: dict[str, Any]) -> Any:
        try:
            return await fn(params)
        except LocalProtocolError as exc:
            raise ControlError("refused", str(exc)) from None
        except PolicyValidationError as exc:
            raise ControlError(
                "policy_invalid", "\n".join(str(i) for i in exc.issues) or str(exc)
            ) from None
        except ConfigError as exc:
            raise ControlError("config_invalid", str(exc)) from None

    wrapper.__doc__ = fn.__doc__
    return wrapper


def METHODS_BOUND(rt: NodeRuntime) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
    host = rt.host

    async def ping(p: dict[str, Any]) -> Any:
        """Liveness: ``{"pong": true, "now": <node clock>}``."""
        return {"pong": True, "now": rt.now()}

    async def status(p: dict[str, Any]) -> Any:
        """Node name, addresses, ports, clock, data plane, policy, SA counts."""
        return {
            "name": rt.cfg.name,
            "pid": os.getpid(),
            "addresses": rt.cfg.addresses,
            "udp": [f"{a}:{port}" for a, port in rt.udp],
            "clock": {"mode": rt.clock.mode, "now": rt.now()},
            "dataplane": rt.plane.status() if rt.plane else None,
            "policy": host.policy.policy.name if host.policy else None,
            "ike_sas": len(host.ike2.ike_sas()) + len(host.ike1.ike_sa_ids()),
            "child_sas": len(host.child_sas()),
            "misbehaviour": dict(host.misbehaviour),
            "uptime": time.time() - rt.started,
        }

    async def load_policy(p: dict[str, Any]) -> Any:
        """Load/replace the policy: ``{"path": ...}`` or ``{"text": <YAML>}``."""
        if "text" in p:
            compiled = host.load_policy(str(p["text"]), rt.now(), text=True)
        else:
            compiled = host.load_policy(Path(str(p["path"])), rt.now())
        rt._update_routes()
        rt.after()
        cfgs = host.cfgs
        return {
            "name": compiled.policy.name,
            "entries": len(compiled.spd.entries()),
            "warnings": list(compiled.warnings) + (cfgs.warnings if cfgs else []),
            "rules": sorted(cfgs.rules) if cfgs else [],
        }

    async def get_policy(p: dict[str, Any]) -> Any:
        """The compiled policy in force (SPD, PAD), or null."""
        return host.policy.to_json() if host.policy else None

    async def set_credentials(p: dict[str, Any]) -> Any:
        """Replace credentials: the ``credentials`` section of the node configuration."""
        model = nconfig.CredentialsModel.model_validate(p)
        host.set_credentials(nconfig.credentials(model), rt.now())
        rt.after()
        return {
            "psk": sorted(host.credentials.psks),
            "warnings": host.cfgs.warnings if host.cfgs else [],
        }

    async def set_ike(p: dict[str, Any]) -> Any:
        """Replace the IKE settings: the ``ike`` section (ports and listen excepted)."""
        base = rt.cfg.ike.model_dump()
        base.update(p)
        model = nconfig.IkeModel.model_validate(base)
        host.set_overrides(nconfig.overrides(model), rt.now())
        rt.after()
        return {"warnings": host.cfgs.warnings if host.cfgs else []}

    async def initiate(p: dict[str, Any]) -> Any:
        """Bring up a Child SA for ``rule`` now (optional ``peer``, ``version``)."""
        ike_sa_id = host.initiate(
            str(p["rule"]),
            rt.now(),
            peer=p.get("peer"),
            version=int(p["version"]) if p.get("version") else None,
        )
        rt.after()
        return {"ike_sa_id": ike_sa_id.hex()}

    async def terminate(p: dict[str, Any]) -> Any:
        """Delete one IKE SA (``ike_sa_id``) or all, sending Deletes."""
        n = host.terminate(rt.now(), _ike_sa_id(p) if p.get("ike_sa_id") else None)
        rt.after()
        return {"deleted": n}

    async def rekey_child(p: dict[str, Any]) -> Any:
        """Rekey the Child SA with this inbound or outbound ``spi``."""
        host.rekey_child(_spi(p), rt.now())
        rt.after()
        return {"ok": True}

    async def delete_child(p: dict[str, Any]) -> Any:
        """Delete the Child SA with this ``spi`` (either direction), sending a Delete."""
        host.delete_child(_spi(p), rt.now())
        rt.after()
        return {"ok": True}

    async def rekey_ike(p: dict[str, Any]) -> Any:
        """Rekey an IKEv2 IKE SA (``ike_sa_id``)."""
        host.rekey_ike(_ike_sa_id(p), rt.now())
        rt.after()
        return {"ok": True}

    async def liveness_check(p: dict[str, Any]) -> Any:
        """Send an IKEv2 liveness check (empty INFORMATIONAL) on ``ike_sa_id``."""
        host.liveness_check(_ike_sa_id(p), rt.now())
        rt.after()
        return {"ok": True}

    async def list_sas(p: dict[str, Any]) -> Any:
        """IKE and Child SAs; ``keys: true`` adds every key (/work/notes/oracle-keys.md)."""
        return sadump.dump(host, keys=bool(p.get("keys", False)))

    async def counters(p: dict[str, Any]) -> Any:
        """Every counter: node, driver (drop reasons), agent, IKEv2, IKEv1, I/O."""
        out = host.all_counters()
        out["io"] = dict(sorted(rt.counters.items()))
        return out

    async def agent_state(p: dict[str, Any]) -> Any:
        """The policy agent's state machines, flows and counters."""
        return host.agent.status()

    async def audit(p: dict[str, Any]) -> Any:
        """Audit records (policy agent), optionally ``since`` a time and of some ``kinds``."""
        since = float(p.get("since", float("-inf")))
        kinds = set(p.get("kinds") or [])
        return [
            r.to_json()
            for r in host.agent.audit
            if r.time >= since and (not kinds or r.kind in kinds)
        ]

    async def events(p: dict[str, Any]) -> Any:
        """The node's own event log (IKE SAs, Child SAs, acquires, misbehaviours)."""
        since = float(p.get("since", float("-inf")))
        return [{"time": t, "kind": k, **f} for t, k, f in host.events if t >= since]

    async def driver_audit(p: dict[str, Any]) -> Any:
        """The driver's dropped-packet audit records (RFC 4301 §5.2)."""
        return [
            {
                "time": r.time,
                "verdict": r.verdict.name.lower(),
                "spi": r.spi,
                "src": r.src,
                "dst": r.dst,
                "protocol": r.ip_protocol,
                "seq": r.seq,
                "detail": r.detail,
            }
            for r in host.sad.audit
        ]

    async def inject(p: dict[str, Any]) -> Any:
        """Hand IP packets (hex) to the node: ``direction`` ``out`` (from the local stack,
        default) or ``in`` (as if received from the wire)."""
        packets = [bytes.fromhex(x) for x in p.get("packets", [])]
        now = rt.now()
        if p.get("direction", "out") == "in":
            for pkt in packets:
                host.raw_received(pkt, now)
        else:
            for pkt in packets:
                host.outbound_packet(pkt, now)
        host.poll(now)
        rt.after()
        return {"injected": len(packets)}

    async def delivered(p: dict[str, Any]) -> Any:
        """Packets delivered to the local stack (api plane): ``max``, ``peek``."""
        if not isinstance(rt.plane, ApiPlane):
            raise ControlError("refused", "delivered packets are kept by the api data plane only")
        limit = int(p["max"]) if p.get("max") is not None else None
        return rt.plane.take(limit, bool(p.get("peek", False)))

    async def clock(p: dict[str, Any]) -> Any:
        """Clock mode: ``{"mode": "real"|"virtual"}``; returns the mode and the time."""
        if "mode" in p:
            mode = str(p["mode"])
            if mode not in ("real", "virtual"):
                raise ControlError("bad_params", "mode is real or virtual")
            rt.clock.set_mode(mode)
            rt.after()
        return {"mode": rt.clock.mode, "now": rt.now()}

    async def advance(p: dict[str, Any]) -> Any:
        """Virtual clock: advance by ``seconds``, firing every timer due on the way."""
        if rt.clock.mode != "virtual":
            raise ControlError("refused", "advance needs the virtual clock (method clock)")
        seconds = float(p["seconds"])
        if seconds < 0:
            raise ControlError("bad_params", "seconds must be >= 0")
        return {"now": rt.advance(seconds)}

    async def misbehave(p: dict[str, Any]) -> Any:
        """Switch a misbehaviour on/off: ``{"name": ..., "value": ...}``."""
        host.set_misbehaviour(str(p["name"]), p.get("value", True), rt.now())
        rt.after()
        return dict(host.misbehaviour)

    async def misbehaviours(p: dict[str, Any]) -> Any:
        """The misbehaviours this node offers and the ones in force."""
        return {"available": MISBEHAVIOURS, "active": dict(host.misbehaviour)}

    async def set_next_seq(p: dict[str, Any]) -> Any:
        """Make ``seq`` the next sequence number of the outbound SA ``spi`` (RFC 4303 §3.3.3
        probes: the 2^32 boundary, ESN)."""
        sa = host.out_sa(_spi(p))
        if sa is None:
            raise ControlError("refused", f"no outbound SA {_spi(p):08x}")
        sa.set_next_seq(int(p["seq"]))
        return {"ok": True}

    async def send_dummy(p: dict[str, Any]) -> Any:
        """Send one dummy ESP packet (Next Header 59, RFC 4303 §2.6) on outbound SA ``spi``."""
        sa = host.out_sa(_spi(p))
        if sa is None or not hasattr(sa, "dummy"):
            raise ControlError("refused", f"no outbound ESP SA {_spi(p):08x}")
        verdict, data = sa.dummy(rt.now(), int(p.get("length", 0)))
        if data:
            host._emit_protected(sa, data)
        rt.after()
        return {"verdict": verdict.name.lower()}

    async def record_received(p: dict[str, Any]) -> Any:
        """Record the ESP/AH datagrams this node receives (``on``, ``capacity``): the
        harness's view of what a peer sent; ``on: false`` stops and forgets them."""
        if p.get("on", True):
            capacity = int(p.get("capacity", 4096))
            if not 0 < capacity <= 1_000_000:
                raise ControlError("bad_params", "capacity is 1..1000000")
            rt.wire_log = deque(rt.wire_log or (), maxlen=capacity)
        else:
            rt.wire_log = None
        return {"recording": rt.wire_log is not None}

    async def received(p: dict[str, Any]) -> Any:
        """The recorded ESP/AH datagrams (``max``, ``peek``), oldest first: ``packet`` is the
        IP datagram, or the UDP payload with ``udp`` = [source, port, local address, port]."""
        log_ = rt.wire_log
        if log_ is None:
            raise ControlError("refused", "not recording (method record_received)")
        n = len(log_) if p.get("max") is None else min(int(p["max"]), len(log_))
        items = [log_[i] for i in range(n)]
        if not p.get("peek"):
            for _ in range(n):
                log_.popleft()
        return [{"time": t, "packet": d.hex(), "udp": list(u) if u else None} for t, d, u in items]

    async def shutdown(p: dict[str, Any]) -> Any:
        """Stop gracefully (as SIGTERM): Deletes sent, device and routes removed."""
        rt.stop()
        return {"stopping": True}

    async def methods(p: dict[str, Any]) -> Any:
        """Every control method with its one-line description."""
        return {name: (fn.__doc__ or "").strip().split("\n")[0] for name, fn in table.items()}

    table: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
        name: _protocol_error(fn)
        for name, fn in {
            "ping": ping,
            "status": status,
            "methods": methods,
            "load_policy": load_policy,
            "get_policy": get_policy,
            "set_credentials": set_credentials,
            "set_ike": set_ike,
            "initiate": initiate,
            "terminate": terminate,
            "rekey_child": rekey_child,
            "rekey_ike": rekey_ike,
            "delete_child": delete_child,
            "liveness_check": liveness_check,
            "list_sas": list_sas,
            "counters": counters,
            "agent_state": agent_state,
            "audit": audit,
            "events": events,
            "driver_audit": driver_audit,
            "inject": inject,
            "delivered": delivered,
            "clock": clock,
            "advance": advance,
            "misbehave": misbehave,
            "misbehaviours": misbehaviours,
            "set_next_seq": set_next_seq,
            "send_dummy": send_dummy,
            "record_received": record_received,
            "received": received,
            "shutdown": shutdown,
        }.items()
    }
    return table


def STREAMS(rt: NodeRuntime) -> dict[str, Callable[[dict[str, Any]], AsyncIterator[Any]]]:
    async def audit_stream(p: dict[str, Any]) -> AsyncIterator[Any]:
        """Audit records as they are written (``history: true`` replays the kept ones)."""
        log_ = rt.host.agent.audit
        seen = 0 if p.get("history") else log_.total
        while True:
            total = log_.total
            if total > seen:
                records = list(log_)
                new = min(total - seen, len(records))
                for r in records[len(records) - new :]:
                    yield r.to_json()
                seen = total
            await asyncio.sleep(0.02)

    return {"audit_stream": audit_stream}


# ========================================================================================= main


def main(argv: list[str] | None = None) -> int:
    """``python -m reference_impl.node --config node.yaml``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m reference_impl.node", description="Run a reference IPsec node."
    )
    parser.add_argument("--config", required=True, help="node configuration (YAML)")
    parser.add_argument(
        "--check", action="store_true", help="validate the configuration and policy, then exit"
    )
    args = parser.parse_args(argv)
    return run_node(args.config, check=args.check)


def run_node(path: str | Path, *, check: bool = False) -> int:
    try:
        cfg = nconfig.load(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.logging, cfg.name)
    try:
        runtime = NodeRuntime(cfg)  # credentials and policy are checked here, nothing bound
    except ConfigError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PolicyValidationError as exc:
        issues = "\n".join(str(i) for i in exc.issues) or str(exc)
        print(f"error: policy {cfg.policy}: invalid policy\n{issues}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, LocalProtocolError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if check:
        print(f"{path}: valid")
        return EXIT_OK
    try:
        return asyncio.run(runtime.run())
    except KeyboardInterrupt:
        return EXIT_OK
