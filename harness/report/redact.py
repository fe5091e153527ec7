"""Keeping secrets out of reports.

Always removed, whatever the options: pre-shared keys and private keys, as registered
literals (:meth:`Redactor.add_secret`) and by pattern (PEM private key blocks, ``secret =``
lines of swanctl.conf, ``: PSK "..."`` lines of ipsec.secrets, ``psk:`` keys of our policy
files). SA keys (ESP/AH keys, SK_* of IKE) are removed from text unless export-keys is on,
and Wireshark key tables are not written at all without it (see :mod:`.recorder`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MARK = "«redacted»"

_PEM_PRIVATE = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL)
# swanctl.conf `secret = ...`, strongSwan/libreswan ipsec.secrets `: PSK "..."`, and the
# YAML/JSON spelling of our own policy and peer files.
# Each pattern's group 1 is kept, the secret after it is replaced, group "tail" is kept.
_CONFIG_SECRETS = (
    re.compile(r"(?im)^(\s*secret\s*=\s*)\S.*$"),
    re.compile(r"(?i)(:\s*(?:PSK|XAUTH|EAP|NTLM|PIN)\s+)(?:\"[^\"\n]*\"|'[^'\n]*'|\S+)"),
    re.compile(
        r"(?im)^(\s*[\"']?(?:psk|pre_?shared_?key|preshared|secret|password|passphrase|"
        r"private_key)[\"']?\s*[:=]\s*)\S.*?(?P<tail>,?)$"
    ),
)
# `ip xfrm state` key lines: `enc cbc(aes) 0x...`, `auth-trunc hmac(sha256) 0x... 128`,
# `aead rfc4106(gcm(aes)) 0x... 128`.
_XFRM_KEYS = re.compile(r"(?im)^(\s*(?:enc|auth|auth-trunc|aead)\s+\S+\s+)0x[0-9a-f]+")
# Key material in JSON/YAML dumps of our node's SAs: "encr_key": "00ab...", sk_d: ...
_NAMED_KEYS = re.compile(
    r"(?i)([\"']?\b(?:\w*_key|\w*key_\w*|key|sk_[a-z]{1,3}|skeyid\w*)[\"']?\s*[:=]\s*[\"']?)"
    r"(?:0x)?[0-9a-f]{16,}"
)


class Redactor:
    """Replaces secrets in text; tells whether binary data contains a registered secret."""

    def __init__(self, *, export_keys: bool = False, secrets: Iterable[str | bytes] = ()) -> None:
        self.export_keys = export_keys
        self._secrets: list[str] = []
        for s in secrets:
            self.add_secret(s)

    def add_secret(self, secret: str | bytes) -> None:
        """Register a literal (a PSK, a password) that must never appear in a report."""
        text = secret.decode("utf-8", "replace") if isinstance(secret, bytes) else secret
        if len(text) >= 4 and text not in self._secrets:
            self._secrets.append(text)
            self._secrets.sort(key=len, reverse=True)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    def text(self, text: str) -> str:
        """``text`` with every secret replaced by :data:`MARK`."""
        for s in self._secrets:
            if s in text:
                text = text.replace(s, MARK)
        text = _PEM_PRIVATE.sub(
            lambda m: f"-----BEGIN {m.group(1)}-----\n{MARK}\n-----END {m.group(1)}-----", text
        )
        for pattern in _CONFIG_SECRETS:
            text = pattern.sub(_keep_prefix, text)
        if not self.export_keys:
            text = _XFRM_KEYS.sub(lambda m: m.group(1) + MARK, text)
            text = _NAMED_KEYS.sub(lambda m: m.group(1) + MARK, text)
        return text

    def binary_has_secret(self, data: bytes) -> bool:
        """Whether binary evidence holds a registered secret (it is then withheld)."""
        return any(s.encode() in data for s in self._secrets) or (b"PRIVATE KEY-----" in data)


def _keep_prefix(m: re.Match[str]) -> str:
    tail = m.groupdict().get("tail") or ""
    return m.group(1) + MARK + tail
