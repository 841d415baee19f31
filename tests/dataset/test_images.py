"""Image loading from files and base64, with errors that name where the image came from."""
import base64
import io

import pytest
from PIL import Image

from dataset.images import decode_base64_image, load_image
from dataset.shards import BadRecordError


def png_bytes(mode="RGB", color=(10, 200, 30), size=(8, 6)):
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def test_file_and_bytes_and_base64_give_the_same_rgb_image(tmp_path):
    path = tmp_path / "gray.png"
    path.write_bytes(png_bytes("L", 77))
    from_file = load_image(path)
    assert from_file.mode == "RGB" and from_file.size == (8, 6) and from_file.getpixel((3, 3)) == (77, 77, 77)
    data = png_bytes()
    assert load_image(data).getpixel((0, 0)) == (10, 200, 30)
    assert load_image(base64.b64encode(data).decode(), base64=True).getpixel((7, 5)) == (10, 200, 30)
    assert decode_base64_image(base64.b64encode(data)).size == (8, 6)


def test_missing_file_names_where_and_path(tmp_path):
    with pytest.raises(BadRecordError, match=r"^shard\.jsonl:12: image file not found: .*nope\.png"):
        load_image(tmp_path / "nope.png", where="shard.jsonl:12")


@pytest.mark.parametrize("value,message", [
    ("abc", "invalid base64"),  # wrong padding
    (base64.b64encode(b"definitely not an image").decode(), "cannot decode the image"),
    ("", "expected a non-empty base64"),
    (None, "expected a non-empty base64"),
])
def test_bad_base64_names_where(value, message):
    with pytest.raises(BadRecordError, match=rf"^images\.jsonl:3: {message}"):
        load_image(value, base64=True, where="images.jsonl:3")


def test_undecodable_file_names_where(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 garbage")
    with pytest.raises(BadRecordError, match=r"^x\.jsonl:1: cannot decode the image .*broken\.jpg"):
        load_image(path, where="x.jsonl:1")
