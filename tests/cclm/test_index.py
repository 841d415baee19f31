"""The image index on disk (cclm/index.py): finding images, adding only what is new, saving without ever leaving a
mixed or damaged index, and refusing another model's features."""
import json
import os

import pytest
import torch
from PIL import Image

import cclm
from cclm.index import INDEX_FILE, ImageIndex, IndexFolderError, index_images, scan_images


@pytest.fixture(scope="module")
def api(tiny_cclm_checkpoint):
    return cclm.load(tiny_cclm_checkpoint[0], device="cpu")


def make_images(folder, n, start=0, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"img{i:03d}.jpg"
        Image.new("RGB", size, (37 * i % 256, 90, 255 - 11 * i % 256)).save(path)
        paths.append(path)
    return paths


class EncoderCalls:
    """Counts the images that go through the model's vision encoder."""

    def __init__(self, api):
        self.images = 0
        self.handle = api.model.vision_encoder.register_forward_hook(self._count)

    def _count(self, module, inputs, output):
        self.images += inputs[0].shape[0]

    def close(self):
        self.handle.remove()


def test_scan_finds_images_recursively_and_lists_the_rest(tmp_path):
    make_images(tmp_path / "a", 2)
    make_images(tmp_path / "a" / "deeper", 1, start=5)
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / "a" / "noext").write_bytes(b"x")
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "a" / ".git").mkdir()
    (tmp_path / "a" / ".git" / "config.png").write_bytes(b"x")
    scan = scan_images([tmp_path / "a"])
    assert [str(p.relative_to(tmp_path / "a")) for p in scan.images] == ["deeper/img005.jpg", "img000.jpg",
                                                                         "img001.jpg"]  # sorted by path
    assert sorted((os.path.basename(p), why) for p, why in scan.skipped) == [
        ("noext", "not an image file (no extension)"), ("notes.txt", "not an image file (.txt)")]
    listed = scan_images([tmp_path / "a"], tmp_path / "list.txt", lambda path: ["img001.jpg", "deeper/img005.jpg"])
    assert [p.name for p in listed.images] == ["img001.jpg", "img005.jpg"]


def test_an_index_is_extended_without_encoding_its_images_again(api, tmp_path):
    first = make_images(tmp_path / "photos", 5)
    index = ImageIndex(tmp_path / "index", api.identity)
    calls = EncoderCalls(api)
    try:
        report = index_images(api, index, first, batch_size=4, progress=False)
        assert (report.added, report.encoded, calls.images) == (5, 5, 5)
        features = index.features.clone()
        more = make_images(tmp_path / "photos", 3, start=5)
        again = ImageIndex.load(tmp_path / "index")
        report = index_images(api, again, first + more, batch_size=4, progress=False)
        assert (report.added, report.unchanged, report.encoded, calls.images) == (3, 5, 3, 8)
        assert torch.equal(again.features[:5], features)
        assert torch.allclose(again.features[5:], api.encode_images(more), atol=1e-6)
        # a changed file is encoded again, in its row
        Image.new("RGB", (40, 30), (0, 0, 0)).save(first[2])
        os.utime(first[2], ns=(1, 1))
        report = index_images(api, ImageIndex.load(tmp_path / "index"), first + more, progress=False)
        assert (report.updated, report.unchanged, report.encoded) == (1, 7, 1)
    finally:
        calls.close()
    saved = ImageIndex.load(tmp_path / "index")
    assert saved.paths == [str(p.resolve()) for p in first + more]
    assert torch.allclose(saved.features[2], api.encode_images(first[2])[0], atol=1e-6)
    assert saved.row_of(more[0]) == 5 and saved.row_of(tmp_path / "elsewhere.jpg") is None
    # one features file: the previous ones were removed after the json pointed at the new one
    assert len(list((tmp_path / "index").glob("features-*.safetensors"))) == 1


def test_unreadable_images_are_listed_and_the_others_indexed(api, tmp_path):
    good = make_images(tmp_path / "p", 2)
    broken = tmp_path / "p" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    index = ImageIndex(tmp_path / "index", api.identity)
    report = index_images(api, index, good + [broken], progress=False)
    assert report.added == 2 and [p for p, _ in report.unreadable] == [str(broken)]
    assert "cannot decode the image" in report.unreadable[0][1]


def test_search_returns_the_most_similar_rows(api, tmp_path):
    feats = torch.nn.functional.normalize(torch.randn(6, api.embed_dim), dim=1)
    index = ImageIndex(tmp_path, api.identity, feats, [{"path": f"/x/{i}.jpg", "size": 1, "mtime_ns": 1}
                                                       for i in range(6)])
    scores, rows = index.search(feats[[4, 1]], 2)
    assert rows[:, 0].tolist() == [4, 1] and torch.allclose(scores[:, 0], torch.ones(2))


def test_another_models_index_is_refused(api, tmp_path):
    other = dict(api.identity, fingerprint="0" * 32, checkpoint="/somewhere/else.pth")
    index = ImageIndex(tmp_path, other)
    with pytest.raises(IndexFolderError, match=r"built by another model \(/somewhere/else.pth, fingerprint 0+\)"):
        index_images(api, index, make_images(tmp_path / "p", 1), progress=False)


def test_a_damaged_index_is_one_line(api, tmp_path):
    with pytest.raises(IndexFolderError, match="no image index in"):
        ImageIndex.load(tmp_path)
    index = ImageIndex(tmp_path, api.identity)
    index_images(api, index, make_images(tmp_path / "p", 2), progress=False)
    meta = json.loads((tmp_path / INDEX_FILE).read_text())
    features = tmp_path / meta["features_file"]
    features.write_bytes(b"\xff" * 8 + b"{}")  # a corrupt safetensors header
    with pytest.raises(IndexFolderError, match=rf"index\.json: damaged index: its features file {features} cannot be "
                                               r"read \(.*header") as caught:
        ImageIndex.load(tmp_path)
    assert "\n" not in str(caught.value)
    features.unlink()
    with pytest.raises(IndexFolderError, match="damaged index"):
        ImageIndex.load(tmp_path)
