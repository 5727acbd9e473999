"""The misconceptions the CNN units' checks name, as identifiers (class insight).

Every typical mistake a check knows (:class:`assignments.cnn_common.judging.Mistake`: the wrong
answer it gives, the id below, the sentence the student reads) carries one of these ids as data.
A check that recognises a mistake raises :class:`assignments.cnn_common.public_checks.CheckFailed`
with the ids; the judge records them on the case (``CaseResult.misconceptions``); the instructor's
report counts, per question, how many of the students who answered it made each one.  Nothing
reads the feedback's wording.  The spec's ``misconceptions`` field names this module;
``tests/test_insight.py`` checks that every id a check can raise is in :data:`CATALOGUE` and that
every sample's designed mistake is named by its id.
"""

from __future__ import annotations

FLIPPED_FILTER = "flipped_filter"
SWAPPED_AXES = "swapped_axes"
FORGOT_BIAS = "forgot_bias"
FORGOT_INPUT_CHANNELS = "forgot_input_channels"
PADDING_MIXUP = "padding_mixup"
POOLING_FLOOR = "pooling_floor"
FORGOT_PLUS_ONE = "forgot_plus_one"
IGNORED_STRIDE = "ignored_stride"
POOL_WINDOW_SIZE = "pool_window_size"
FORGOT_RELU = "forgot_relu"
NOT_MAX_POOLING = "not_max_pooling"
DROPPED_AXIS = "dropped_axis"

#: id -> what the instructor reads
CATALOGUE: dict[str, str] = {
    FLIPPED_FILTER: "flipped the filter (convolution instead of cross-correlation)",
    SWAPPED_AXES: "swapped rows and columns / axis order",
    FORGOT_BIAS: "forgot the biases",
    FORGOT_INPUT_CHANNELS: "forgot the input channels",
    PADDING_MIXUP: "confused 'same', 'valid' and 'full' padding",
    POOLING_FLOOR: "rounded up: kept incomplete windows (pooling/stride floor)",
    FORGOT_PLUS_ONE: "forgot the + 1 in the output-size formula",
    IGNORED_STRIDE: "ignored the stride",
    POOL_WINDOW_SIZE: "used the wrong pooling window",
    FORGOT_RELU: "forgot or misplaced the ReLU",
    NOT_MAX_POOLING: "pooled with another function than the maximum",
    DROPPED_AXIS: "dropped the channel or filter axis of a layer's output",
}
