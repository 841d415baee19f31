"""Every reader on malformed and unusual inputs (tests/data/bad_inputs/manifest.json), by default and with
skip_bad_samples: errors name the file and the 1-based line (YAML: also the dotted key; checkpoints and text
encoder folders: the file), skipped records are counted per file, and a bad record never shifts or drops a good one
(the lines kept and skipped add up to a plain parse of the file)."""
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dataset.checked import AnnotationError, BadDataError, BadRecordError, configure_reading, read_report
from dataset.gqa import GQAEvalDataset, GQATrainDataset, read_answer_list, read_gqa_questions
from dataset.marvl import convert_marvl_file
from dataset.nlvr import read_nlvr2_jsonl, read_nlvr_json
from dataset.pretrain import build_processor
from dataset.retrieval import ImageRoots, read_eval_data, read_train_pairs
from dataset.shards import ShardedJsonl, ShardedJsonlDataset
from dataset.tokenizer import TokenizerError, load_tokenizer
from dataset.xvnli import read_xvnli
from utils.checkpoint import load_file
from utils.config import ConfigError, load_config

DATA = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"
MANIFEST = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))
CASES = MANIFEST["cases"]
ERRORS = {"AnnotationError": AnnotationError, "BadRecordError": BadRecordError, "BadDataError": BadDataError,
          "ConfigError": ConfigError, "RuntimeError": RuntimeError, "TokenizerError": TokenizerError}
JSON_LINES = {"xflickrco_train", "xflickrco_eval", "wit_train", "wit_eval", "xvnli", "nlvr2_jsonl", "marvl",
              "pretrain_images", "pretrain_mono", "pretrain_para", "pretrain_regions"}
PRETRAIN = {"pretrain_images": ("images", "train_file"), "pretrain_mono": ("images_mono", "train_file_mono"),
            "pretrain_para": ("texts_para", "train_file_text"), "pretrain_regions": ("regions", "train_file_regions")}


@pytest.fixture(scope="module")
def image_roots(tmp_path_factory) -> dict[str, Path]:
    """One folder per image root the cases name, holding the images the good records refer to."""
    base = tmp_path_factory.mktemp("bad-input-images")
    for root, names in MANIFEST["images"].items():
        for name in names:
            path = base / root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (10, 120, 200)).save(path)
    return {root: base / root for root in MANIFEST["images"]}


def line_of(at: str) -> int:
    return int(at.rsplit(":", 1)[1])


def pretrain_lines(case, path, roots, tokenizer, skip: bool) -> list[int]:
    """Process every record of a pre-training shard with the loader's processor; the lines of the records used."""
    block, files_key = PRETRAIN[case["format"]]
    config = {"max_words": 30, "max_tokens": 20, "mask_prob": 0.4, "max_masks": 6, "image_res": 32, "patch_size": 16,
              files_key: [str(path)],
              block: {"batch_size": 1 if block != "regions" else 4, "max_images": 1, "max_regions": 3,
                      "max_words": 30, "max_tokens": 20, "mask_prob": 0.4, "max_masks": 6,
                      "is_image_rpath": case.get("is_image_rpath", False), "image_root": str(roots["pretrain"])}}
    if block == "images_mono":
        config[block]["caption_key"] = "desc"
    process, collate, per_batch = build_processor(block, config, tokenizer)
    kept = []

    def recording(record, ref, rng):
        sample = process(record, ref, rng)
        kept.append(ref.line)
        return sample

    dataset = ShardedJsonlDataset(ShardedJsonl([path], shuffle=False), recording, collate, per_batch,
                                  skip_bad_samples=skip, max_bad_fraction=0.5, min_records_for_bad_check=1,
                                  name=block)
    for _ in dataset:
        pass
    return sorted(set(kept))


def read_case(case, path, roots, tmp_path, tokenizer_dir, tokenizer, skip) -> list[int]:
    """Read the case's file with the reader of its format; the sorted lines of the records it kept."""
    fmt = case["format"]
    if fmt in PRETRAIN:
        return pretrain_lines(case, path, roots, tokenizer, skip)
    retrieval = {"caption_json_train": ("caption_json", True), "caption_json_eval": ("caption_json", False),
                 "xflickrco_train": ("xflickrco", True), "xflickrco_eval": ("xflickrco", False),
                 "wit_train": ("wit", True), "wit_eval": ("wit", False)}
    if fmt in retrieval:
        kind, train = retrieval[fmt]
        image_roots = ImageRoots(images=roots["flickr"], flickr30k=roots["flickr"], coco=roots["coco"],
                                 wit=roots["wit"])
        if train:
            return sorted({line_of(p.image.at) for p in read_train_pairs(kind, path, image_roots)})
        return sorted(line_of(image.at) for image in read_eval_data(kind, path, image_roots).images)
    if fmt == "xvnli":
        return [line_of(e.at) for e in read_xvnli(path, roots["xvnli"])[0]]
    if fmt in ("gqa_list", "gqa_dict", "gqa_train"):
        dataset = (GQATrainDataset if fmt == "gqa_train" else GQAEvalDataset)(read_gqa_questions(path), roots["gqa"],
                                                                                lambda image: image)
        return [line_of(q.at) for q in dataset.questions]
    if fmt == "gqa_answers":
        return read_answer_list(path)
    if fmt == "nlvr_json":
        return [line_of(e.at) for e in read_nlvr_json(path, roots["nlvr"])]
    if fmt == "nlvr2_jsonl":
        return [line_of(e.at) for e in read_nlvr2_jsonl(path, roots["nlvr"])]
    if fmt == "marvl":
        converted = tmp_path / "converted.json"
        converted.write_text(json.dumps(convert_marvl_file(path, case["few_shot"])), encoding="utf-8")
        examples = read_nlvr_json(converted, roots["marvl"])
        assert all(e.at.startswith(f"{path}:") for e in examples)  # the IGLUE file, not the converted one
        return [line_of(e.at) for e in examples]
    if fmt == "yaml":
        return load_config(path, schema=DATA / "yaml" / "schema.yaml")
    if fmt == "checkpoint":
        return load_file(path)
    if fmt == "text_encoder":
        return load_tokenizer(path)
    raise AssertionError(f"no reader for format {fmt!r}")


def case_path(case, tmp_path, tokenizer_dir) -> Path:
    path = DATA / case["file"]
    if case.get("copy_tokenizer"):  # a folder with the tokenizer files of one model and the config.json of another
        folder = tmp_path / Path(case["file"]).name
        shutil.copytree(tokenizer_dir, folder)
        shutil.copy(path / "config.json", folder / "config.json")
        return folder
    return path


def plain_record_lines(path: Path, fmt: str) -> int:
    """How many records a plain parse finds: non-blank lines, or the items of the top-level list or object."""
    if fmt in JSON_LINES:
        return sum(1 for raw in path.read_bytes().split(b"\n") if raw.strip())
    return len(json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=list))  # repeated keys count


@pytest.mark.parametrize("mode", ["default", "skip"])
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, mode, image_roots, tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    expected = case["default"] if case["skip"] == "same" or mode == "default" else case["skip"]
    configure_reading({"skip_bad_samples": mode == "skip", "max_bad_fraction": 0.5})
    path = case_path(case, tmp_path, tiny_tokenizer_dir)
    read = (lambda: read_case(case, path, image_roots, tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                              mode == "skip"))
    if "error" in expected:
        with pytest.raises(ERRORS[expected["error"]]) as info:
            read()
        message = str(info.value)
        reported = DATA / expected.get("reported_file", case["file"]) if case["format"] != "text_encoder" else path
        if case["format"] == "yaml":
            reported = reported.resolve()
        place = f"{reported}:{expected['line']}:" if expected["line"] is not None else f"{reported}"
        assert place in message, f"{place!r} not in {message!r}"
        assert re.search(expected["match"], message), f"{expected['match']!r} not in {message!r}"
        if "key" in expected:
            assert f"'{expected['key']}'" in message
        return
    kept = read()
    assert kept == expected["kept"]
    bad, dropped = expected.get("bad", []), expected.get("dropped", [])
    assert sorted(kept + bad + dropped) == sorted(set(kept + bad + dropped))  # no line both kept and skipped
    assert len(kept) + len(bad) + len(dropped) == plain_record_lines(path, case["format"])
    if case["format"] not in PRETRAIN:
        assert read_report()[str(path)] == {"read": plain_record_lines(path, case["format"]), "skipped": len(bad),
                                            **expected.get("events", {})}
    else:
        assert read_report().get(str(path), {}) == expected.get("events", {})


def test_the_manifest_covers_every_format_with_enough_cases():
    formats = {c["format"] for c in CASES}
    assert formats >= JSON_LINES | {"caption_json_train", "caption_json_eval", "gqa_list", "gqa_dict", "gqa_answers",
                                    "nlvr_json", "yaml", "checkpoint", "text_encoder"}
    assert len(CASES) >= 100
    assert all((DATA / c["file"]).exists() for c in CASES)
