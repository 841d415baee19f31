"""Pre-training readers: record formats from fixture shards, batch keys, bad input naming file and line, loaders."""
import base64
import io
import json

import pytest
import torch
from PIL import Image

from dataset.pretrain import build_pretrain_datasets, build_pretrain_loaders
from dataset.shards import BadDataError, BadRecordError
from dataset.text import pad_ids, tokenize_to_ids

TEXT = ["text_ids", "text_atts", "text_ids_masked", "masked_pos", "masked_ids"]


def png_b64(color=(200, 30, 30), size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records))
    return path


def make_config(**overrides):
    config = dict(
        max_words=30, max_tokens=20, mask_prob=0.4, max_masks=6, skipgram_prb=0.2, skipgram_size=3, image_res=32,
        patch_size=16,
        images=dict(image_key="binary", is_image_rpath=False, caption_key="caption", batch_size=2, num_workers=0),
        images_mono=dict(image_key="binary", caption_key="desc", batch_size=2, num_workers=0),
        texts_para=dict(source_key="source_text", target_key="target_text", batch_size=2, num_workers=0,
                        max_words=30, max_tokens=24, mask_prob=0.4, max_masks=8),
        regions=dict(image_key="binary", caption_key="caption", batch_size=4, max_images=2, max_regions=3,
                     min_perc_in_image=0.5, careful_hflip=True, code_switch=False, num_workers=0))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def padded_ids(tokenizer, text, max_tokens):
    return pad_ids(tokenize_to_ids(tokenizer, text, max_tokens), max_tokens, 1)


def only_dataset(config, tokenizer, name, **kwargs):
    datasets = build_pretrain_datasets(config, tokenizer, seed=1, repeat=False, **kwargs)
    assert list(datasets) == [name]
    return datasets[name]


def test_image_text_with_two_languages(tmp_path, tiny_tokenizer):
    captions = {"en": "A red circle, on the left!", "de": "Ein roter Kreis links."}
    write_jsonl(tmp_path / "img" / "part-0.jsonl", [{"binary": png_b64(), "caption": captions}] * 3)
    config = make_config(train_file=[str(tmp_path / "img")], sample_2_captions=True)
    batches = list(only_dataset(config, tiny_tokenizer, "images"))
    assert len(batches) == 2 and batches[1]["image"].shape == (2, 3, 32, 32)
    batch = batches[0]
    assert set(batch) == {"image"} | set(TEXT) | {k + "_2" for k in TEXT}
    assert batch["text_ids"].shape == (2, 20) and batch["masked_pos"].shape == (2, 6)
    expected = {tuple(padded_ids(tiny_tokenizer, "a red circle on the left", 20)[0]),
                tuple(padded_ids(tiny_tokenizer, "ein roter kreis links", 20)[0])}
    for row in range(2):
        pair = {tuple(batch["text_ids"][row].tolist()), tuple(batch["text_ids_2"][row].tolist())}
        assert pair == expected
    ids, atts = padded_ids(tiny_tokenizer, "a red circle on the left", 20)
    for row in range(2):
        suffix = "" if batch["text_ids"][row].tolist() == ids else "_2"
        assert batch["text_atts" + suffix][row].tolist() == atts
    assert all(batch[k].dtype == torch.long for k in TEXT)


def test_image_text_from_paths_and_language_choice(tmp_path, tiny_tokenizer):
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "pics" / "blue.png")
    records = [{"img": "pics/blue.png", "caption": [{"en": "a blue square", "fr": "un carré bleu"}]}] * 2
    write_jsonl(tmp_path / "paths.jsonl", records)
    config = make_config(train_file=[str(tmp_path / "paths.jsonl")],
                         images=dict(image_key="img", is_image_rpath=True, language_chosen=["fr"]))
    batch = next(iter(only_dataset(config, tiny_tokenizer, "images")))
    assert "text_ids_2" not in batch
    french = padded_ids(tiny_tokenizer, "un carré bleu", 20)[0]
    assert batch["text_ids"].tolist() == [french, french]
    assert batch["image"].shape == (2, 3, 32, 32)


def test_monolingual_image_text(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "mono.jsonl", [{"binary": png_b64(), "desc": ["two green triangles"]},
                                          {"binary": png_b64(), "desc": "one small yellow star"}])
    config = make_config(train_file_mono=[str(tmp_path / "mono.jsonl")])
    batch = next(iter(only_dataset(config, tiny_tokenizer, "images_mono")))
    assert sorted(batch["text_ids"].tolist()) == sorted(
        [padded_ids(tiny_tokenizer, "two green triangles", 20)[0],
         padded_ids(tiny_tokenizer, "one small yellow star", 20)[0]])


def test_parallel_text_in_both_orders(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "para.jsonl", [{"source_text": "two green triangles", "target_text": "zwei grüne dreiecke"}]
                * 40)
    config = make_config(train_file_text=[str(tmp_path / "para.jsonl")])
    batches = list(only_dataset(config, tiny_tokenizer, "texts_para"))
    assert set(batches[0]) == set(TEXT) | {k + "_2" for k in TEXT}
    assert batches[0]["text_ids"].shape == (2, 24) and batches[0]["masked_ids"].shape == (2, 8)
    en, de = (padded_ids(tiny_tokenizer, t, 24)[0] for t in ("two green triangles", "zwei grüne dreiecke"))
    orders = {(tuple(b["text_ids"][r].tolist()), tuple(b["text_ids_2"][r].tolist())) for b in batches for r in range(2)}
    assert orders == {(tuple(en), tuple(de)), (tuple(de), tuple(en))}


GOOD = {"binary": None, "caption": {"en": "a red circle", "de": "ein roter kreis"}}


def good_record():
    return {**GOOD, "binary": png_b64()}


@pytest.mark.parametrize("bad,config_change,message", [
    ('{"binary": "abc", "caption": ', {}, r"malformed JSON \(Expecting value, column 29\)"),
    ({"binary": "abc", "caption": {"en": "a dog"}}, {}, "invalid base64 image data"),
    ({"binary": base64.b64encode(b"not an image").decode(), "caption": {"en": "a dog"}}, {},
     "cannot decode the image"),
    ({"binary": "missing.png", "caption": {"en": "a dog"}}, {"images": {"is_image_rpath": True}},
     "image file not found: .*missing.png"),
    ({"caption": {"en": "a dog"}}, {}, "missing key 'binary'"),
    ({"binary": "PNG", "caption": {"en": "a dog"}}, {"images": {"language_chosen": ["en", "de"]}},
     r"missing caption language\(s\) \['de'\]"),
    ({"binary": "PNG", "caption": {"en": " ?! "}}, {}, "empty text after cleaning"),
    ({"binary": "PNG", "caption": {"en": "a dog"}}, {"sample_2_captions": True}, "2 caption languages are needed"),
])
def test_bad_image_text_records_name_file_and_line(tmp_path, tiny_tokenizer, bad, config_change, message):
    if isinstance(bad, dict) and bad.get("binary") == "PNG":
        bad = {**bad, "binary": png_b64()}
    good = good_record()
    if config_change.get("images", {}).get("is_image_rpath"):
        Image.new("RGB", (8, 8)).save(tmp_path / "present.png")
        good["binary"] = "present.png"
    path = write_jsonl(tmp_path / "images.jsonl", [good, "", bad])
    config = make_config(train_file=[str(path)], **config_change)
    with pytest.raises(BadRecordError, match=rf"images\.jsonl:3: {message}"):
        list(only_dataset(config, tiny_tokenizer, "images"))


@pytest.mark.parametrize("bad,message", [
    ({"source_text": "a red circle", "target_text": ""}, "empty text after cleaning"),
    ({"source_text": "a red circle"}, "missing key 'target_text'"),
    ({"source_text": "a red circle", "target_text": 3}, "'target_text' must be a string"),
])
def test_bad_parallel_records_name_file_and_line(tmp_path, tiny_tokenizer, bad, message):
    path = write_jsonl(tmp_path / "para.jsonl", [{"source_text": "a", "target_text": "b"}, bad])
    config = make_config(train_file_text=[str(path)])
    with pytest.raises(BadRecordError, match=rf"para\.jsonl:2: {message}"):
        list(only_dataset(config, tiny_tokenizer, "texts_para"))


def test_skip_bad_samples_counts_and_aborts(tmp_path, tiny_tokenizer):
    bad = [{"binary": "abc", "caption": {"en": "a dog"}}, "{oops", {"binary": png_b64(), "caption": {"en": "?"}}]
    path = write_jsonl(tmp_path / "mixed.jsonl", [good_record()] * 9 + bad)
    tolerant = make_config(train_file=[str(path)],
                           images=dict(skip_bad_samples=True, max_bad_fraction=0.3, batch_size=3))
    batches = list(only_dataset(tolerant, tiny_tokenizer, "images"))
    assert [b["image"].shape[0] for b in batches] == [3, 3, 3]  # the 9 good records, the 3 bad ones skipped
    strict = make_config(train_file=[str(path)], skip_bad_samples=True, max_bad_fraction=0.1,
                         min_records_for_bad_check=5)
    with pytest.raises(BadDataError, match=r"2 of 11 records were bad .*mixed\.jsonl:11: malformed JSON"):
        list(only_dataset(strict, tiny_tokenizer, "images"))


def test_loaders_for_every_source_with_workers(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "img.jsonl", [good_record()] * 8)
    write_jsonl(tmp_path / "para.jsonl", [{"source_text": "a red circle", "target_text": "ein roter kreis"}] * 8)
    regions = {"binary": png_b64(size=(64, 64)), "elems": [{"bb": [4, 4, 30, 30], "caption": {"en": "a red circle"}}]}
    write_jsonl(tmp_path / "reg.jsonl", [regions] * 4)
    config = make_config(train_file=["img.jsonl"], train_file_text=["para.jsonl"], train_file_regions=["reg.jsonl"],
                         texts_para=dict(num_workers=2))
    loaders = build_pretrain_loaders(config, tiny_tokenizer, rank=0, world_size=1, seed=0, root=tmp_path,
                                     positions={"texts_para": (0, 3)}, pin_memory=False)
    assert set(loaders) == {"images", "texts_para", "regions"}
    assert loaders["texts_para"].num_workers == 2 and loaders["texts_para"].persistent_workers
    assert not loaders["images"].persistent_workers and loaders["images"].batch_size is None
    assert loaders["texts_para"].dataset.start_batches == 3
    for name, loader in loaders.items():
        iterator = iter(loader)
        for _ in range(5):  # endless: more batches than one pass holds
            batch = next(iterator)
        assert batch["text_ids"].shape[0] == (4 if name == "regions" else 2)
        del iterator


def test_missing_config_key_is_named(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "img.jsonl", [good_record()])
    config = make_config(train_file=[str(tmp_path / "img.jsonl")])
    del config["mask_prob"]
    with pytest.raises(KeyError, match="'mask_prob' is missing"):
        build_pretrain_datasets(config, tiny_tokenizer)


def test_batches_match_the_golden_model_inputs(golden_dir, tmp_path, tiny_tokenizer):
    from ruamel.yaml import YAML

    config = YAML(typ="safe").load((golden_dir / "pretrain_tiny.yaml").read_text())
    golden = torch.load(golden_dir / "tiny_inputs.pt", weights_only=True)
    write_jsonl(tmp_path / "img.jsonl", [good_record()] * 2)
    write_jsonl(tmp_path / "para.jsonl", [{"source_text": "a red circle", "target_text": "ein roter kreis"}] * 2)
    region = {"binary": png_b64(size=(240, 240)), "caption": {"en": "two green triangles"},
              "elems": [{"bb": [10, 10, 90, 60], "caption": {"en": "a red circle"}}]}
    write_jsonl(tmp_path / "reg.jsonl", [region] * 2)
    config.update(train_file=[str(tmp_path / "img.jsonl")], train_file_text=[str(tmp_path / "para.jsonl")],
                  train_file_regions=[str(tmp_path / "reg.jsonl")], sample_2_captions=True)
    for block in ("images", "texts_para", "regions"):
        config[block].update(batch_size=2, num_workers=0)
    config["regions"]["max_images"] = 2
    datasets = build_pretrain_datasets(config, tiny_tokenizer, repeat=False)
    for name, key in (("images", "a"), ("texts_para", "b"), ("regions", "c")):
        batch = next(iter(datasets[name]))
        expected = {k: v for k, v in golden[key].items() if v is not None}
        assert set(batch) == set(expected), name
        for k, v in expected.items():
            if isinstance(v, torch.Tensor):
                assert batch[k].dtype == v.dtype and batch[k].shape[1:] == v.shape[1:], (name, k)
            else:
                assert batch[k] == v


def as_tars(jsonl, out, shard_size=2):
    """Our jsonl shards -> tar shards through ``python3 -m dataset.prepare tars``."""
    from dataset.prepare import main

    return main(["tars", "--jsonl", str(jsonl), "--out", str(out), "--shard-size", str(shard_size)])


def test_tar_shards_give_the_batches_of_the_jsonl_they_were_made_from(tmp_path, tiny_tokenizer):
    captions = [{"en": "a red circle", "de": "ein roter kreis"}, {"en": "two blue squares", "fr": "deux carrés"}]
    records = [{"binary": png_b64((40 * i, 9, 9)), "caption": captions[i % 2]} for i in range(5)]
    write_jsonl(tmp_path / "img" / "part-0.jsonl", records)
    regions = {"binary": png_b64(size=(64, 64)), "caption": {"en": "a scene"},
               "elems": [{"bb": [4, 4, 30, 30], "caption": {"en": "a red circle on the left"}}]}
    write_jsonl(tmp_path / "reg" / "part-0.jsonl", [regions] * 3)
    assert len(as_tars(tmp_path / "img", tmp_path / "img_tar")) == 3
    as_tars(tmp_path / "reg", tmp_path / "reg_tar")
    for source, jsonl, tar in (("images", "img", "img_tar"), ("regions", "reg", "reg_tar")):
        key = "train_file" if source == "images" else "train_file_regions"
        batches = {}
        for folder in (jsonl, tar):
            config = make_config(**{key: [str(tmp_path / folder)]}, sample_2_captions=source == "images",
                                 images=dict(shuffle=False), regions=dict(shuffle=False))
            batches[folder] = list(only_dataset(config, tiny_tokenizer, source))
        # the same images and texts: only the randomness seeds differ (file, offset) -> (shard, sample index)
        assert len(batches[jsonl]) == len(batches[tar])
        for a, b in zip(batches[jsonl], batches[tar]):
            assert a.keys() == b.keys() and a["image"].shape == b["image"].shape


def test_tar_captions_by_a_configured_json_field(tmp_path, tiny_tokenizer):
    from dataset.tars import TarShardWriter

    writer = TarShardWriter(tmp_path / "t", 4)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buf, "JPEG")
    writer.add({"jpg": buf.getvalue(), "txt": "an english caption",
                "json": {"captions_ml": {"de": "ein roter kreis"}, "url": "http://x"}})
    writer.close()
    config = make_config(train_file=[str(tmp_path / "t" / "part-00000.tar")],
                         images=dict(caption_key="captions_ml", batch_size=1))
    batch = next(iter(only_dataset(config, tiny_tokenizer, "images")))
    expected, _ = padded_ids(tiny_tokenizer, "ein roter kreis", 20)
    assert batch["text_ids"][0].tolist() == expected
    config["images"]["caption_key"] = "caption"  # no such json field: the .txt member is the caption
    batch = next(iter(only_dataset(config, tiny_tokenizer, "images")))
    assert batch["text_ids"][0].tolist() == padded_ids(tiny_tokenizer, "an english caption", 20)[0]


def test_tar_and_jsonl_sources_from_s3(tmp_path, tiny_tokenizer, s3_bucket):
    write_jsonl(tmp_path / "img" / "part-0.jsonl", [good_record()] * 4)
    write_jsonl(tmp_path / "para.jsonl", [{"source_text": "a red circle", "target_text": "ein roter kreis"}] * 4)
    as_tars(tmp_path / "img", f"{s3_bucket}/img")
    from utils.remote import url_filesystem

    fs, root = url_filesystem(s3_bucket)
    fs.put_file(str(tmp_path / "para.jsonl"), f"{root}/para/part-0.jsonl")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{root}/img")) == [
        "part-00000.tar", "part-00000_stats.json", "part-00001.tar", "part-00001_stats.json"]
    config = make_config(train_file=[f"{s3_bucket}/img/part-{{00000..00001}}.tar"],
                         train_file_text=[f"{s3_bucket}/para/"])
    loaders = build_pretrain_loaders(config, tiny_tokenizer, seed=0, repeat=False, pin_memory=False)
    assert [b["image"].shape[0] for b in loaders["images"]] == [2, 2]
    assert [b["text_ids"].shape[0] for b in loaders["texts_para"]] == [2, 2]
    with pytest.raises(ValueError, match="parallel text is read from jsonl"):
        build_pretrain_datasets(make_config(train_file_text=[f"{s3_bucket}/img/"]), tiny_tokenizer)
