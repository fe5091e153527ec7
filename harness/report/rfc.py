"""RFC references as the catalogue writes them, and links to their sections.

The catalogue's "RFC §" column holds forms such as ``7296 §2.7, §3.3.6``,
``7296 §2.21.2; 4301 §4.4.3``, ``3948 §2.1`` or ``7296 §3.1 (R flag)``: one or more RFC
numbers, each followed by one or more sections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RFC = re.compile(r"(?:RFC\s*)?(\d{3,5})")
_SECTION = re.compile(r"§\s*([0-9A-Z][0-9.]*[0-9A-Za-z]?)")


@dataclass(frozen=True)
class RfcRef:
    """One RFC section: ``RfcRef("7296", "2.7")``; section may be empty (the whole RFC)."""

    rfc: str
    section: str = ""

    @property
    def url(self) -> str:
        """The section on rfc-editor.org (the HTML rendering has ``#section-N`` anchors)."""
        base = f"https://www.rfc-editor.org/rfc/rfc{self.rfc}"
        if not self.section:
            return base
        if self.section[0].isalpha():
            # "A2.2" and "A.2.2" are both written; the anchor is "appendix-A.2.2".
            section = self.section
            if len(section) > 1 and section[1].isdigit():
                section = f"{section[0]}.{section[1:]}"
            return f"{base}#appendix-{section}"
        return f"{base}#section-{self.section}"

    @property
    def feature(self) -> str:
        return f"RFC {self.rfc}"

    def __str__(self) -> str:
        return f"RFC {self.rfc} §{self.section}" if self.section else f"RFC {self.rfc}"


def parse_refs(text: str) -> list[RfcRef]:
    """All RFC sections in a catalogue reference, in order, without duplicates."""
    refs: list[RfcRef] = []
    for part in re.split(r"[;/]", text):
        m = _RFC.search(part)
        if m is None:
            continue
        rfc = m.group(1)
        sections = _SECTION.findall(part[m.end() :])
        if not sections:
            refs.append(RfcRef(rfc))
        for section in sections:
            refs.append(RfcRef(rfc, section.rstrip(".")))
    if not refs:
        return []
    unique: list[RfcRef] = []
    for ref in refs:
        if ref not in unique:
            unique.append(ref)
    return unique


def primary_ref(text: str) -> RfcRef:
    """The first reference: the one a case is grouped under (Allure story, matrix section)."""
    refs = parse_refs(text)
    return refs[0] if refs else RfcRef("?")


def section_sort_key(ref: RfcRef) -> tuple[int, tuple[int, ...], str]:
    """Natural order: RFC 4303 §3.4.10 after §3.4.3."""
    nums = tuple(int(p) for p in re.findall(r"\d+", ref.section))
    return (int(ref.rfc) if ref.rfc.isdigit() else 0, nums, ref.section)
