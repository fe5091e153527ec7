"""Facts about this host that decide peer capabilities, probed once per process."""

from __future__ import annotations

import functools

from harness import doctor


@functools.cache
def kernel_ipsec() -> tuple[bool, bool, str]:
    """Whether the kernel can install ESP and AH states: ``(esp, ah, detail)``.

    Tried in a scratch namespace (``harness.doctor.probe_xfrm``), not read from the config:
    on this project's CI kernel XFRM is present but ESP and AH are not (errno 38).
    """
    with doctor.probe_namespace() as ns:
        result = doctor.probe_xfrm(ns)
    if not result.available:
        return False, False, result.detail
    return "ESP: yes" in result.detail, "AH: yes" in result.detail, result.detail
