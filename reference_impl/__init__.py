"""Reference IPsec implementation: policy agent, driver (ESP/AH), IKEv2 and IKEv1 (ISAKMP/Oakley).

Every protocol object here is sans-I/O (see ARCHITECTURE.md); only ``reference_impl.node``
touches sockets, devices and clocks.
"""
