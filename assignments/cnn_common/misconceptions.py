"""The misconceptions the CNN units' feedback names, as identifiers (class insight).

Each check names a likely mistake in prose ("Likely mistake: flipped the filter ..."); the grader
tags every failed case with the identifiers below (``CaseResult.misconceptions``), so the
instructor's report can count how many students made each one.  ``classify`` reads only the
grader's own message text (never the student's code); one message may name several (forgot both
the input channels and the biases).  tests/test_insight.py checks that every sample's designed
mistake maps to an identifier.
"""

from __future__ import annotations

import re

#: id -> what the instructor reads
CATALOGUE: dict[str, str] = {
    "flipped_filter": "flipped the filter (convolution instead of cross-correlation)",
    "swapped_axes": "swapped rows and columns / axis order",
    "forgot_bias": "forgot the biases",
    "forgot_input_channels": "forgot the input channels",
    "padding_mixup": "confused 'same', 'valid' and 'full' padding",
    "pooling_floor": "rounded up: kept incomplete windows (pooling/stride floor)",
    "forgot_plus_one": "forgot the + 1 in the output-size formula",
    "ignored_stride": "ignored the stride",
    "pool_window_size": "used the wrong pooling window",
    "forgot_relu": "forgot or misplaced the ReLU",
    "not_max_pooling": "pooled with another function than the maximum",
}

_PATTERNS: dict[str, str] = {
    "flipped_filter": r"flipped the (?:filter|kernel)",
    "swapped_axes": r"rows and columns|transposed the filter|channels last|\(height, width, channels\)",
    "forgot_bias": r"forgot (?:the )?bias|forgot both the input channels and the biases|added the bias after",
    "forgot_input_channels": r"forgot (?:the )?(?:\d+ )?input channels|forgot both the input channels|"
                             r"used only the first input channel|output depth is the number of filters",
    "padding_mixup": r"'(?:full|same|valid)' padding|padding is '|padding='same'|default 'valid'|"
                     r"size with 'same'|zeros before the patch|padded input size|Conv2D is 'valid'",
    "pooling_floor": r"incomplete|rounded up|(?:windows|window) that do(?:es)? not fit",
    "forgot_plus_one": r"forgot the \+ 1",
    "ignored_stride": r"ignored the stride|moved the window by",
    "pool_window_size": r"used \d+x\d+ windows",
    "forgot_relu": r"forgot the ReLU|added the bias after the ReLU",
    "not_max_pooling": r"took the (?:average|minimum|mean|sum) instead of the maximum",
}
_COMPILED = {key: re.compile(pattern, re.IGNORECASE) for key, pattern in _PATTERNS.items()}


def classify(message: str) -> list[str]:
    """The misconception ids a failed check's message names (catalogue order), [] for none."""
    text = message or ""
    return [key for key, pattern in _COMPILED.items() if pattern.search(text)]
