"""Probes: the wire oracle and the crafting helpers.

* :mod:`harness.probes.pcap`: captures (pcap/pcapng) as classified IP datagrams;
* :mod:`harness.probes.keys`: the neutral key set (node SA dumps, strongSwan's log, JSON) and
  the Wireshark 4.0 key table;
* :mod:`harness.probes.oracle`: decrypt and verify every IKE and ESP/AH packet of a capture;
* :mod:`harness.probes.craft`: crafted IKE/ESP/AH packets for negative cases, and injection.
"""
