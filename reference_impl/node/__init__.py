"""The reference node: the one I/O shell around the sans-I/O IPsec components.

* :mod:`.host` — the sans-I/O host: policy agent + driver + IKEv2 + IKEv1 wired together;
* :mod:`.ikeconf` — from a compiled policy and the node's credentials to IKE configurations;
* :mod:`.config` — the node configuration file (pydantic; exit code 2 when invalid);
* :mod:`.runtime` — the asyncio shell (sockets, timers, signals, logs) and the control methods;
* :mod:`.dataplane` — ``tun`` (TUN device, fwmark routing, raw ESP/AH) and ``api`` planes;
* :mod:`.control`, :mod:`.udp`, :mod:`.tun` — JSON-lines control server, UDP endpoints with
  ICMP error queues, the TUN device;
* :mod:`.sadump` — SAs with keys for the harness's oracle.

Run: ``python -m reference_impl.node --config node.yaml`` or ``ipsec-interop node --config``.
"""
