"""The IPsec Policy Agent (seed component 1): policies in YAML, SPD/PAD compilation, and the
per-SA-selector state machine with fallback to clear. Spec: ../shared/design/policy-spec.md.

Typical use (the node wires the queues to IKE, the driver and the network)::

    agent = PolicyAgent(driver, CompileEnv(local_addresses=("192.0.2.1",)))
    agent.load_policy("policy.yaml", now)
    agent.outbound(packet, now)          # then drain agent.packets_to_send(),
    agent.next_request()                 # ... Acquire / CancelAcquire for IKE
    agent.handle_event(ike_event, now)   # PeerReplied, ChildSaEstablished, NegotiationFailed
"""

from reference_impl.policy.addresses import AddressRange, CompileEnv
from reference_impl.policy.agent import PolicyAgent, SaState
from reference_impl.policy.audit import AuditLog, AuditRecord, Counters
from reference_impl.policy.compiler import compile_policy
from reference_impl.policy.packet import PacketMeta, parse_ip_packet
from reference_impl.policy.profiles import PROFILES, HoldPolicy, Shunt, TimingProfile
from reference_impl.policy.requests import (
    Acquire,
    CancelAcquire,
    ChildSettings,
    DeleteChildSa,
    IcmpHint,
    IkeRequest,
    LocalIcmp,
    OutboundSad,
    ResponderPolicy,
    Transmit,
    Verdict,
)
from reference_impl.policy.resolved import Action, FilterAction, Policy
from reference_impl.policy.spd import CompiledPolicy, Direction, Pad, SaSelector, Spd, SpdEntry
from reference_impl.policy.validate import (
    Issue,
    PolicyValidationError,
    load_policy_file,
    load_policy_text,
)

__all__ = [
    "PROFILES",
    "Acquire",
    "Action",
    "AddressRange",
    "AuditLog",
    "AuditRecord",
    "CancelAcquire",
    "ChildSettings",
    "CompileEnv",
    "CompiledPolicy",
    "Counters",
    "DeleteChildSa",
    "Direction",
    "FilterAction",
    "HoldPolicy",
    "IcmpHint",
    "IkeRequest",
    "Issue",
    "LocalIcmp",
    "OutboundSad",
    "PacketMeta",
    "Pad",
    "Policy",
    "PolicyAgent",
    "PolicyValidationError",
    "ResponderPolicy",
    "SaSelector",
    "SaState",
    "Shunt",
    "Spd",
    "SpdEntry",
    "TimingProfile",
    "Transmit",
    "Verdict",
    "compile_policy",
    "load_policy_file",
    "load_policy_text",
    "parse_ip_packet",
]
