"""No annotation can make a reader open a file outside its image root: an absolute system path, a ``../`` escape or a
symlink pointing out is refused (by default an error naming file and line, with skip_bad_samples a skipped record)
before anything is opened. The openers are patched to fail the test if the file outside is ever touched."""
import builtins
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

import dataset.images
from dataset.checked import AnnotationError, configure_reading
from dataset.gqa import GQAEvalDataset, GQATrainDataset, read_gqa_questions
from dataset.marvl import convert_marvl_file
from dataset.nlvr import NLVRDataset
from dataset.pretrain import build_processor
from dataset.retrieval import ImageRoots, RetrievalEvalDataset, RetrievalTrainDataset, read_eval_data, read_train_pairs
from dataset.shards import ShardedJsonl, ShardedJsonlDataset
from dataset.xvnli import XVNLIDataset


def to_tensor(image):
    return image


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    """An image root with one good image, a valid image outside it (``secret.jpg``), and openers that fail the test
    if anything outside the root is opened. Yields (root, secret)."""
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "good.jpg")
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    (root / "link.jpg").symlink_to(secret)
    outside = [os.path.realpath(secret), "/etc/"]
    real_open, real_image_open = builtins.open, Image.open

    def check(target):
        if isinstance(target, (str, os.PathLike)):
            resolved = os.path.realpath(target)
            if any(resolved == o or resolved.startswith(o) for o in outside):
                pytest.fail(f"opened {target} (outside the image root)")

    def guarded_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def guarded_image_open(fp, *args, **kwargs):
        check(fp)
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(dataset.images.Image, "open", guarded_image_open)
    yield root, secret


def escapes(secret: Path) -> list[str]:
    """Image paths that leave the root ``<tmp>/images``: up and out, absolute, a system file, a symlink out."""
    return ["../secret.jpg", str(secret), "/etc/hostname", "link.jpg"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def expect_refused(read, mode: str, line: int, path: Path):
    """By default the read fails naming ``path:line``; with skipping it succeeds and returns the good items."""
    configure_reading({"skip_bad_samples": mode == "skip", "max_bad_fraction": 0.9})
    if mode == "default":
        refused = "leaves the image root|must name a file|should be a bare file name"
        with pytest.raises(AnnotationError, match=rf"{path.name}:{line}: .*({refused})"):
            read()
        return None
    return read()


def load_every_item(ds):
    for index in range(len(ds)):
        ds[index]


MODES = ["default", "skip"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("train", [True, False])
def test_retrieval_json(guarded, tmp_path, mode, train):
    root, secret = guarded
    for bad in escapes(secret):
        entry = {"caption": "a dog" if train else ["a dog"], "image_id": 1}
        path = tmp_path / "r.json"
        path.write_text(json.dumps([{**entry, "image": "good.jpg"}, {**entry, "image": bad}]), encoding="utf-8")
        read = (lambda: RetrievalTrainDataset(read_train_pairs("caption_json", path, ImageRoots(images=root)),
                                              to_tensor)) if train else \
            (lambda: RetrievalEvalDataset(read_eval_data("caption_json", path, ImageRoots(images=root)), to_tensor))
        ds = expect_refused(read, mode, 1, path)
        if ds is not None:
            assert len(ds) == 1
            load_every_item(ds)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("train", [True, False])
def test_xflickrco(guarded, tmp_path, mode, train):
    root, secret = guarded
    for bad in escapes(secret) + ["COCO/../../secret.jpg"]:
        path = write_jsonl(tmp_path / "x.jsonl", [{"sentences": ["a dog"], "id": 1, "img_path": "good.jpg"},
                                                  {"sentences": ["a cat"], "id": 2, "img_path": bad}])
        roots = ImageRoots(flickr30k=root, coco=root)
        read = (lambda: RetrievalTrainDataset(read_train_pairs("xflickrco", path, roots), to_tensor)) if train else \
            (lambda: RetrievalEvalDataset(read_eval_data("xflickrco", path, roots), to_tensor))
        ds = expect_refused(read, mode, 2, path)
        if ds is not None:
            load_every_item(ds)


@pytest.mark.parametrize("mode", MODES)
def test_wit_image_files(guarded, tmp_path, mode):
    root, secret = guarded
    for bad in ("https://x.org/%2E%2E%2Fsecret.jpg", "https://x.org/" + str(secret).replace("/", "%2F"),
                "https://x.org/a/link.jpg"):
        path = write_jsonl(tmp_path / "w.jsonl", [
            {"image_url": "https://x.org/a/good.jpg", "caption_reference_description": "a dog"},
            {"image_url": bad, "caption_reference_description": "a cat"}])
        ds = expect_refused(lambda: RetrievalEvalDataset(read_eval_data("wit", path, ImageRoots(wit=root)),
                                                         to_tensor), mode, 2, path)
        if ds is not None:
            load_every_item(ds)


@pytest.mark.parametrize("mode", MODES)
def test_xvnli(guarded, tmp_path, mode):
    root, secret = guarded
    for bad in ("../secret", str(secret)[:-4], "/etc/hostname", "link"):
        path = write_jsonl(tmp_path / "v.jsonl", [
            {"Flikr30kID": "good", "gold_label": "neutral", "sentence2": "a dog"},
            {"Flikr30kID": bad, "gold_label": "neutral", "sentence2": "a cat"}])
        ds = expect_refused(lambda: XVNLIDataset(path, root, to_tensor), mode, 2, path)
        if ds is not None:
            load_every_item(ds)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("train", [True, False])
def test_gqa(guarded, tmp_path, mode, train):
    root, secret = guarded
    for bad in ("../secret", str(secret)[:-4], "link"):
        path = tmp_path / "q.json"
        path.write_text(json.dumps({"1": {"question": "Is it red?", "imageId": "good", "answer": "yes"},
                                    "2": {"question": "Is it blue?", "imageId": bad, "answer": "no"}}, indent=0),
                        encoding="utf-8")
        make = GQATrainDataset if train else GQAEvalDataset
        ds = expect_refused(lambda: make(read_gqa_questions(path), root, to_tensor), mode, 7, path)
        if ds is not None:
            assert len(ds) == 1
            load_every_item(ds)


@pytest.mark.parametrize("mode", MODES)
def test_nlvr_json_and_nlvr2_jsonl(guarded, tmp_path, mode):
    root, secret = guarded
    for bad in escapes(secret):
        path = tmp_path / "n.json"
        path.write_text(json.dumps([{"sentence": "two dogs", "label": True, "images": ["good.jpg", "good.jpg"]},
                                    {"sentence": "a cat", "label": True, "images": ["good.jpg", bad]}], indent=0),
                        encoding="utf-8")
        ds = expect_refused(lambda: NLVRDataset(path, root, to_tensor), mode, 10, path)
        if ds is not None:
            load_every_item(ds)
    (root / "dev").mkdir()
    for side in (0, 1):
        Image.new("RGB", (8, 8)).save(root / "dev" / f"dev-1-0-img{side}.png")
    for identifier, directory in (("../../secret-1-0-0", None), ("train-1-0-0", "..")):
        path = write_jsonl(tmp_path / "n2.jsonl", [{"identifier": "dev-1-0-0", "sentence": "a dog", "label": "True"},
                                                   {"identifier": identifier, "directory": directory,
                                                    "sentence": "a cat", "label": "True"}])
        ds = expect_refused(lambda: NLVRDataset(path, root, to_tensor), mode, 2, path)
        if ds is not None:
            load_every_item(ds)


@pytest.mark.parametrize("mode", MODES)
def test_marvl(guarded, tmp_path, mode):
    root, _ = guarded
    folder = root / "marvl-images/id/images/1-x"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    record = {"concept": "1-x", "language": "id", "caption": "ada", "left_img": "a.jpg", "right_img": "a.jpg",
              "label": True}
    for bad in ({"concept": "../../../.."}, {"language": ".."}, {"left_img": "../../../../../secret.jpg"}):
        source = write_jsonl(tmp_path / "marvl-id.jsonl", [record, {**record, **bad}])
        converted = tmp_path / "marvl-id.json"
        converted.write_text(json.dumps(convert_marvl_file(source, few_shot=False)), encoding="utf-8")
        ds = expect_refused(lambda: NLVRDataset(converted, root, to_tensor), mode, 2, source)
        if ds is not None:
            load_every_item(ds)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("block", ["images", "images_mono", "regions"])
def test_pretraining_image_paths(guarded, tmp_path, mode, block, tiny_tokenizer):
    root, secret = guarded
    caption = {"images": ("caption", {"en": "a dog"}), "images_mono": ("desc", "a dog"),
               "regions": ("elems", [{"bb": [0, 0, 4, 4], "caption": "a dog"}])}[block]
    for bad in escapes(secret):
        path = write_jsonl(tmp_path / "shard.jsonl", [{"binary": "good.jpg", caption[0]: caption[1]},
                                                      {"binary": bad, caption[0]: caption[1]}])
        config = {"max_words": 30, "max_tokens": 20, "mask_prob": 0.4, "max_masks": 6, "image_res": 32,
                  "patch_size": 16, block: {"batch_size": 1, "max_images": 1, "is_image_rpath": True,
                                            "image_root": str(root)}}
        if block != "regions":
            config[block]["caption_key"] = caption[0]
        process, collate, per_batch = build_processor(block, config, tiny_tokenizer)
        ds = ShardedJsonlDataset(ShardedJsonl([path], shuffle=False), process, collate, per_batch,
                                 skip_bad_samples=mode == "skip", max_bad_fraction=0.9, min_records_for_bad_check=1)
        if mode == "default":
            with pytest.raises(AnnotationError, match=r"shard\.jsonl:2: image path .* leaves the image root"):
                list(ds)
        else:
            assert len(list(ds)) >= 1


def test_a_root_that_is_a_link_and_absolute_paths_inside_it_are_fine(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "JPEG")
    (real / "a.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "link").symlink_to(real)
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"image": "a.jpg", "caption": ["x"]}, {"image": str(tmp_path / "link/a.jpg"),
                                                                       "caption": ["y"]}]), encoding="utf-8")
    configure_reading({})
    data = read_eval_data("caption_json", path, ImageRoots(images=tmp_path / "link"))
    assert [str(image) for image in data.images] == [str(real / "a.jpg")] * 2
