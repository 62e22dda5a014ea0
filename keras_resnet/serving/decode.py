"""Encoded images of a request to evaluation views, refusing bad bytes with the image's index.

    views = decode_images(images, info, max_pixels)    # tf.string [B] -> float32 [B, S, S, 3]

Each image is checked before it is decoded: JPEG or PNG by its magic bytes, complete (a JPEG's
end-of-image marker after its scan starts, a PNG's IEND chunk), and at most `max_pixels` by its
header; an error names the image's index in the request. The evaluation view then bounds what
it resizes (`data.views.imagenet_eval_view`), so a small file that declares a very long image
costs no more than a square one.
"""

from __future__ import annotations

import tensorflow as tf

from keras_resnet.data.info import DataInfo
from keras_resnet.data.recipes import eval_preprocess
from keras_resnet.data.storage import declared_size, is_jpeg, is_png

_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC


def decode_images(images: tf.Tensor, info: DataInfo, max_pixels: int) -> tf.Tensor:
    """Encoded JPEG/PNG strings [B] -> evaluation views float32 [B, S, S, 3], mean-subtracted."""

    def one(indexed: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        index, image = indexed  # the index makes errors name the offending image of the request
        return eval_preprocess(decode_checked(image, index, max_pixels)[tf.newaxis], info)[0]

    view = tf.TensorSpec([info.image_size, info.image_size, 3], tf.float32)
    return tf.map_fn(one, (tf.range(tf.size(images)), images), fn_output_signature=view)


def decode_checked(image: tf.Tensor, index: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """One encoded image to uint8 [H, W, 3], after the format, completeness and size checks."""
    jpeg, png = is_jpeg(image), is_png(image)
    known = tf.debugging.Assert(
        tf.logical_or(jpeg, png),
        ["Image", index, "of the request is neither JPEG nor PNG (bad or empty image bytes)."],
    )
    # A cut-off file would fail inside the decoder with no word of which image it was.
    with tf.control_dependencies([known]):
        complete = tf.cond(jpeg, lambda: _has_jpeg_end(image), lambda: _ends_with(image, _PNG_END))
    whole = tf.debugging.Assert(
        complete,
        [
            "Image",
            index,
            "of the request is truncated: a JPEG must hold its end-of-image marker (FF D9), a PNG "
            "end with its IEND chunk.",
        ],
    )
    # After the completeness check, which must speak first: a JPEG cut inside its header fails in
    # the header reader too, without the image's index.
    with tf.control_dependencies([whole]):
        height_width = declared_size(image)
    small = tf.debugging.Assert(
        height_width[0] * height_width[1] <= max_pixels,
        [
            "Image",
            index,
            "of the request is too large: its height and width",
            height_width,
            f"exceed the {max_pixels} pixels this export accepts (export.py --max_pixels).",
        ],
    )
    with tf.control_dependencies([whole, small]):
        return tf.io.decode_image(image, channels=3, dtype=tf.uint8, expand_animations=False)


def _ends_with(image: tf.Tensor, marker: bytes) -> tf.Tensor:
    start = tf.maximum(tf.strings.length(image) - len(marker), 0)
    return tf.equal(tf.strings.substr(image, start, len(marker)), marker)


def _has_jpeg_end(image: tf.Tensor) -> tf.Tensor:
    """FF D9 anywhere after the scan starts, not only as the last bytes: phones append data
    (motion photos' video, vendor trailers), which decoders skip. The header's segments are
    stepped over by their lengths, as an EXIF thumbnail in them ends in FF D9 of its own; inside
    the scan the coder escapes FF bytes, so FF D9 there is the end marker."""
    data = tf.cast(tf.io.decode_raw(image, tf.uint8), tf.int32)
    n = tf.size(data)

    def in_header(pos):
        safe = tf.minimum(pos, tf.maximum(n - 2, 0))
        return tf.logical_and(
            pos + 3 < n, tf.logical_and(tf.equal(data[safe], 0xFF), tf.not_equal(data[safe + 1], 0xDA))
        )

    def next_segment(pos):
        safe = tf.minimum(pos, tf.maximum(n - 4, 0))
        return pos + 2 + data[safe + 2] * 256 + data[safe + 3]  # the length counts itself

    # A tuple in, a tuple out: eager while_loop (kr.load, predict) is stricter than a graph's.
    (scan,) = tf.while_loop(in_header, lambda pos: (next_segment(pos),), (tf.constant(2),))
    end = tf.logical_and(tf.equal(data[:-1], 0xFF), tf.equal(data[1:], 0xD9))
    return tf.reduce_any(tf.logical_and(end, tf.range(tf.maximum(n - 1, 0)) >= scan))


def refusal(message: str) -> str:
    """The reason `decode_checked` refused an image, in one line without the request's index: the
    text of its `tf.errors.InvalidArgumentError` message, whose own first line says only
    "Expected 'tf.Tensor(False...)' to be true". A decoder's own error: its first line."""
    if "Summarized data: " not in message:
        lines = message.strip().splitlines()
        return lines[0] if lines else "the decoder refused it"
    parts = message.split("Summarized data: ", 1)[1].splitlines()
    words = [p[2:-1] if p[:2] in ("b'", 'b"') else p for p in parts]
    if words[:1] == ["Image"]:
        words = words[2:]  # "Image", its index in the request
    return " ".join(words).removeprefix("of the request is ").strip()
