"""What may leave the device, and in what form. Pure: no I/O, no clock.

A request goes to the remote generalist only when nothing forbids it: the request is not
``local_only``, the ecology's policy allows remote, the ecology's jurisdiction is not one whose
requests stay local, and no model that answered it belongs to such a jurisdiction (its niche
``jurisdiction``). What is sent is first redacted with the masks the manifest declares.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from .manifest import Policy

__all__ = ["remote_block_reason", "redact", "MASKS"]

# A digit run (any Unicode decimal digit), and a practical e-mail shape (no quoted local parts).
# E-mails are masked before digits, so that "ann42@x.org" is one <email>, whatever order is declared.
MASKS = {
    "emails": (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    "digits": (re.compile(r"\d+"), "<num>"),
}


def remote_block_reason(policy: Policy, local_only: bool,
                        niches: Iterable[Mapping[str, str]] = ()) -> str | None:
    """Why this request must stay on the device, or None when it may go remote.

    Args:
        policy: the ecology's policy.
        local_only: the request's own flag.
        niches: the niche tables of the models that answered the request.
    Returns:
        A short reason for provenance ("local_only", "policy forbids remote", "jurisdiction X
        keeps requests local"), or None.
    """
    if local_only:
        return "local_only"
    if policy.remote != "allowed":
        return "policy forbids remote"
    local = policy.local_jurisdictions
    if not local:
        return None
    if policy.jurisdiction in local:
        return f"jurisdiction {policy.jurisdiction!r} keeps requests local"
    for niche in niches:
        j = niche.get("jurisdiction")
        if j in local:
            return f"jurisdiction {j!r} keeps requests local"
    return None


def redact(text: str, masks: Iterable[str]) -> str:
    """``text`` with every declared mask applied (e-mails before digits).

    Args:
        text: the request text.
        masks: names from MASKS ("digits", "emails"); the manifest validates them.
    Returns:
        The redacted text (the same object when no mask is declared).
    Raises:
        KeyError: an unknown mask name (the manifest parser refuses those first).
    """
    wanted = set(masks)
    unknown = wanted - set(MASKS)
    if unknown:
        raise KeyError(f"unknown redaction mask(s) {sorted(unknown)}")
    for name, (pattern, token) in MASKS.items():
        if name in wanted:
            text = pattern.sub(token, text)
    return text
