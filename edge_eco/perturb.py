"""Seeded text perturbations (typos, casing, punctuation, dropped words). Pure.

Used by ``edge-eco diversity`` to measure how models fail together, by the challenger tool to
augment training data, and by tests to make realistic noisy traffic. Every function takes its
random generator as an argument, so the same seed gives the same text.
"""

from __future__ import annotations

import random
import string

KINDS = ("typo", "casing", "punctuation", "drop_word")
_KEYS = string.ascii_lowercase


def typo(text: str, rng: random.Random) -> str:
    """One keyboard slip: swap two adjacent letters, drop, double or replace one letter."""
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    if not letters:
        return text
    i = rng.choice(letters)
    op = rng.randrange(4)
    if op == 0 and i + 1 < len(text) and text[i + 1].isalpha():
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if op == 1 and len(letters) > 1:
        return text[:i] + text[i + 1:]
    if op == 2:
        return text[:i] + text[i] + text[i:]
    return text[:i] + rng.choice(_KEYS) + text[i + 1:]


def casing(text: str, rng: random.Random) -> str:
    """All upper case, title case, or a few letters flipped."""
    op = rng.randrange(3)
    if op == 0:
        return text.upper()
    if op == 1:
        return text.title()
    return "".join(ch.swapcase() if rng.random() < 0.2 else ch for ch in text)


def punctuation(text: str, rng: random.Random) -> str:
    """Strip punctuation, or add a trailing mark / a comma after a word."""
    stripped = "".join(ch for ch in text if ch not in string.punctuation)
    if stripped != text and rng.random() < 0.5:
        return stripped or text
    words = text.split()
    if len(words) > 2 and rng.random() < 0.5:
        k = rng.randrange(len(words) - 1)
        words[k] += ","
        return " ".join(words)
    return text.rstrip() + rng.choice(("?", "!", "...", " ?"))


def drop_word(text: str, rng: random.Random) -> str:
    """Drop one word (texts of one or two words are kept whole)."""
    words = text.split()
    if len(words) < 3:
        return text
    k = rng.randrange(len(words))
    return " ".join(words[:k] + words[k + 1:])


_FUNCS = {"typo": typo, "casing": casing, "punctuation": punctuation, "drop_word": drop_word}


def perturb(text: str, kind: str, rng: random.Random) -> str:
    """``text`` perturbed by ``kind`` (one of :data:`KINDS`).

    Raises:
        ValueError: an unknown kind.
    """
    try:
        return _FUNCS[kind](text, rng)
    except KeyError:
        raise ValueError(f"unknown perturbation {kind!r}; expected one of {list(KINDS)}") from None


def noisy(text: str, rng: random.Random, p: float = 0.5) -> str:
    """``text`` with each perturbation kind applied with probability ``p`` (for traffic/augmentation)."""
    for kind in KINDS:
        if rng.random() < p:
            text = _FUNCS[kind](text, rng)
    return text
