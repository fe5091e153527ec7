"""IKEv1: ISAKMP (RFC 2408) with Oakley key determination (RFC 2409) as sans-I/O state machines.

The codec is :mod:`reference_impl.isakmp.codec`; the state machine and its settings come with
the exchange modules.
"""
