"""IKEv2 (RFC 7296) as a sans-I/O state machine: codec, IKE SAs and the service owning them."""
