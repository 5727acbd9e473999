"""Identical or near-identical answers, grouped so one decision grades them all.

Two answers are in one group when their text (markdown and code, not outputs), compared with case,
spacing and punctuation ignored, is the same, or at least :data:`NEAR` alike (difflib's ratio) with
the same numbers in the same order, and their images are the same.  Blank answers form one group, and so do answers whose question markers
are missing.  A group is shown once, with each of its members' own text where it differs.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field

NEAR = 0.92  # difflib's ratio of two normalized texts above which they are one group
_WORD = re.compile(r"[^\w]+")
_NUMBER = re.compile(r"\d+")


def normalized(m: dict) -> str:
    """What decides a group: the answer's text, lower case, words only; its images by digest."""
    if not m.get("found"):
        return "\0missing"
    if m.get("blank"):
        return "\0blank"
    text = " ".join(p.get("text", "") for p in m.get("parts") or [] if p.get("kind") in ("markdown", "code"))
    images = [hashlib.sha256(p["data"].encode()).hexdigest()[:12] for p in m.get("parts") or []
              if p.get("kind") == "image"]
    return " ".join(_WORD.sub(" ", text.lower()).split()) + ("\0" + ",".join(images) if images else "")


@dataclass
class Group:
    key: str  # what its members share (the first member's normalized text)
    members: list[dict] = field(default_factory=list)  # the answers ({"who", "sid", "m", ...}) in order
    exact: bool = True  # every member's normalized text is the same
    numbers: list[str] = field(default_factory=list)  # the numbers of its key, in order

    @property
    def id(self) -> str:
        return "g" + hashlib.sha256("\0".join(a["who"] for a in self.members).encode()).hexdigest()[:10]


def group(answers: list[dict]) -> list[Group]:
    """``answers`` (each with ``m``, the answer) in groups, in the order of their first members."""
    groups: list[Group] = []
    by_key: dict[str, Group] = {}
    for a in answers:
        key = normalized(a["m"])
        g = by_key.get(key)
        if g is None and not key.startswith("\0") and "\0" not in key:
            g = _near(key, groups)
        if g is None:
            g = Group(key, numbers=_NUMBER.findall(key))
            groups.append(g)
        elif key != g.key:
            g.exact = False
        by_key.setdefault(key, g)
        g.members.append(a)
    return groups


def _near(key: str, groups: list[Group]) -> Group | None:
    numbers = _NUMBER.findall(key)
    for g in groups:
        if "\0" in g.key or g.numbers != numbers:  # 36928 and 36982 are not near-identical answers
            continue
        matcher = difflib.SequenceMatcher(None, key, g.key, autojunk=False)
        if matcher.real_quick_ratio() >= NEAR and matcher.quick_ratio() >= NEAR and matcher.ratio() >= NEAR:
            return g
    return None
