"""Image decoding for every dataset: files or base64 strings to RGB PIL images, with errors that say where."""
from __future__ import annotations

import base64 as b64
import binascii
import io
import os
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from dataset.errors import BadRecordError

# As the reference: web-crawled JPEGs are often cut short by a few bytes and are still used, and large images are
# not refused (these are module-wide PIL settings).
ImageFile.LOAD_TRUNCATED_IMAGES = True
Image.MAX_IMAGE_PIXELS = None


def _open_rgb(stream, where: str, what: str) -> Image.Image:
    try:
        with Image.open(stream) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadRecordError(f"cannot decode the image {what} ({exc.__class__.__name__}: {exc})", where) from None


def decode_base64_image(s: str | bytes, where: str = "") -> Image.Image:
    """The RGB image encoded (as an image file) in the base64 string ``s``."""
    if not isinstance(s, (str, bytes)) or not s:
        raise BadRecordError(f"expected a non-empty base64 string for the image, got {type(s).__name__}", where)
    try:
        data = b64.b64decode(s, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise BadRecordError(f"invalid base64 image data ({exc})", where) from None
    if not data:
        raise BadRecordError("the base64 image data decodes to nothing", where)
    return _open_rgb(io.BytesIO(data), where, "from base64 data")


def load_image(source, *, base64: bool = False, where: str = "") -> Image.Image:
    """An RGB image from a file path, from raw encoded bytes, or (``base64=True``) from a base64 string."""
    if base64:
        return decode_base64_image(source, where)
    if isinstance(source, (bytes, bytearray)):
        return _open_rgb(io.BytesIO(source), where, "from bytes")
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise BadRecordError(f"expected an image path, got {source!r}", where)
    path = Path(source)
    if not path.is_file():
        raise BadRecordError(f"image file not found: {path}", where)
    return _open_rgb(path, where, str(path))
