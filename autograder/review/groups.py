"""Identical or near-identical answers, grouped so one decision grades them all.

Two answers are in one group when their text (markdown and code, not outputs), compared with case,
spacing and punctuation ignored, is the same, or at least :data:`NEAR` alike (difflib's ratio), and
they hold the same numbers in the same order, signs included (``b = -1`` and ``b = 1`` are a right
and a wrong answer), and the same images.  Blank answers form one group, and so do answers whose
question markers are missing.  A group is *exact* when its members' answers are the same as written
(spacing of prose aside; code and outputs line by line): it is shown once.  Otherwise each of its
answers as written (its *variants*) is shown, with who wrote it, since what grouping ignored (a
sign, an operator, an output) may be the point.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field

NEAR = 0.92  # difflib's ratio of two normalized texts above which they are one group
_WORD = re.compile(r"[^\w]+")
_NUMBER = re.compile(r"[-\u2212]?\d+(?:[.,]\d+)*")  # on the text as written: a sign or a decimal separator counts


def _texts(m: dict, kinds=("markdown", "code")) -> list[dict]:
    return [p for p in m.get("parts") or [] if p.get("kind") in kinds]


def _image_digests(m: dict) -> list[str]:
    return [hashlib.sha256(p["data"].encode()).hexdigest()[:12] for p in m.get("parts") or [] if p.get("kind") == "image"]


def normalized(m: dict) -> str:
    """What decides a group: the answer's text, lower case, words only; its images by digest."""
    if not m.get("found"):
        return "\0missing"
    if m.get("blank"):
        return "\0blank"
    text = " ".join(p.get("text", "") for p in _texts(m))
    images = _image_digests(m)
    return " ".join(_WORD.sub(" ", text.lower()).split()) + ("\0" + ",".join(images) if images else "")


def numbers(m: dict) -> list[str]:
    """The numbers of the answer's text as written, in order, with their signs and decimals."""
    return [n.replace("\u2212", "-") for p in _texts(m) for n in _NUMBER.findall(p.get("text", ""))]


def verbatim(m: dict) -> str:
    """The answer as written, but for the spacing of its prose and the blank ends of its code and outputs:
    members of an exact group share it."""
    if not m.get("found"):
        return "\0missing"
    if m.get("blank"):
        return "\0blank"
    parts = []
    for p in m.get("parts") or []:
        kind = p.get("kind")
        if kind == "image":
            parts.append("image:" + hashlib.sha256(p["data"].encode()).hexdigest())
        elif kind == "markdown":
            parts.append("markdown:" + " ".join(str(p.get("text", "")).split()))
        else:  # code and outputs: indentation and line breaks are part of them
            lines = [line.rstrip() for line in str(p.get("text", "")).splitlines()]
            while lines and not lines[0]:
                lines.pop(0)
            while lines and not lines[-1]:
                lines.pop()
            parts.append(f"{kind}:" + "\n".join(lines))
    return "\0".join(parts)


@dataclass
class Group:
    key: str  # what its members share (the first member's normalized text)
    members: list[dict] = field(default_factory=list)  # the answers ({"who", "sid", "m", ...}) in order
    exact: bool = True  # every member's answer is the same as written (see verbatim): shown once
    numbers: list[str] = field(default_factory=list)  # the numbers its members share, in order
    verbatim: str = ""  # the first member's answer as written
    written: dict[str, list[dict]] = field(default_factory=dict)  # each answer as written -> its members, in order

    @property
    def variants(self) -> list[list[dict]]:
        """The members by answer as written: one list per different answer, in the order of their first members."""
        return list(self.written.values())

    @property
    def id(self) -> str:
        return "g" + hashlib.sha256("\0".join(a["who"] for a in self.members).encode()).hexdigest()[:10]


def group(answers: list[dict]) -> list[Group]:
    """``answers`` (each with ``m``, the answer) in groups, in the order of their first members."""
    groups: list[Group] = []
    by_key: dict[tuple[str, tuple[str, ...]], Group] = {}
    for a in answers:
        key, found, written = normalized(a["m"]), numbers(a["m"]), verbatim(a["m"])
        g = by_key.get((key, tuple(found)))
        if g is None and not key.startswith("\0") and "\0" not in key:
            g = _near(key, found, groups)
        if g is None:
            g = Group(key, numbers=found, verbatim=written)
            groups.append(g)
        elif written != g.verbatim:
            g.exact = False
        by_key.setdefault((key, tuple(found)), g)
        g.members.append(a)
        g.written.setdefault(written, []).append(a)
    return groups


def _near(key: str, found: list[str], groups: list[Group]) -> Group | None:
    for g in groups:
        if "\0" in g.key or g.numbers != found:  # 36928 and 36982, or -1 and 1, are not near-identical answers
            continue
        matcher = difflib.SequenceMatcher(None, key, g.key, autojunk=False)
        if matcher.real_quick_ratio() >= NEAR and matcher.quick_ratio() >= NEAR and matcher.ratio() >= NEAR:
            return g
    return None
