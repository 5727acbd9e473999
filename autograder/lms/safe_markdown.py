"""Markdown from students rendered as HTML that cannot run anything (graders' pages, the review page).

A hand-graded answer is untrusted text.  It is rendered by markdown-it-py (CommonMark, with tables and
strikethrough) with raw HTML turned off: ``<script>``, ``<img onerror=...>``, ``<iframe>`` and every
other tag come out as text.  Links pass markdown-it's own check (no ``javascript:``, ``vbscript:``,
``file:`` or non-image ``data:`` URLs) and open nothing of the page (``rel="noopener noreferrer"``,
a new tab); an image shows only when it is an inline ``data:`` PNG, JPEG, GIF or WebP (a remote one
would tell its server who looked at the answer, and when) of at most
:data:`autograder.manual.MAX_IMAGE_PIXELS` (a few kilobytes can decode to gigabytes in the grader's
browser), else its address is shown as text.
The pages that show the result also forbid every script by their Content-Security-Policy.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markupsafe import Markup, escape

#: for the pages that show rendered answers: no script, no plug-in, no request anywhere but inline images
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
INLINE_IMAGE = ("data:image/png;", "data:image/jpeg;", "data:image/gif;", "data:image/webp;")


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])

    plain_image = md.renderer.rules["image"]

    def link_open(self, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        tokens[idx].attrSet("target", "_blank")
        return self.renderToken(tokens, idx, options, env)

    def image(self, tokens, idx, options, env):
        token = tokens[idx]
        src = str(token.attrGet("src") or "")
        if src.lower().startswith(INLINE_IMAGE) and _small_enough(src):
            return plain_image(tokens, idx, options, env)
        alt = self.renderInlineAsText(token.children or [], options, env)
        return f'<span class="muted">[image{": " + str(escape(alt)) if alt else ""}, not loaded: {escape(src)}]</span>'

    md.add_render_rule("link_open", link_open)
    md.add_render_rule("image", image)
    return md


def _small_enough(src: str) -> bool:
    """Whether an inline image's header says at most MAX_IMAGE_PIXELS (nothing is decoded)."""
    import base64
    import binascii
    from urllib.parse import unquote_to_bytes

    from autograder.manual import MAX_IMAGE_PIXELS, image_pixels

    meta, _, payload = src.partition(",")
    try:
        raw = base64.b64decode(unquote_to_bytes(payload)) if meta.lower().endswith(";base64") \
            else unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return False
    return 0 < image_pixels(raw) <= MAX_IMAGE_PIXELS


_MD = _parser()


def render(text: str | None) -> Markup:
    """``text`` (markdown, untrusted) as safe HTML."""
    return Markup(_MD.render(str(text or "")))


__all__ = ["CSP", "render"]
