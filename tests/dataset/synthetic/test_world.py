"""The synthetic world: deterministic, every file in its real format, labels true of the scenes, held-out kept out."""
import base64
import json
import re
from pathlib import Path

import pytest

import dataset.synthetic.world as synthetic
from dataset.synthetic.world import ensure_world, generate_world, main, read_manifest
from tests.dataset.schemas import check_file

WORLD = dict(images=30, seed=3)
SHAPE = r"(circle|square|triangle|star|cross|diamond)(?:es|s)?"
COLOUR = r"(red|green|blue|yellow|purple|orange|white|black)"
NUMBER = {"a": 1, "an": 1, "two": 2, "three": 3}
POSITION = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom",
            "in the middle": "centre"}
PLACE = "(" + "|".join(POSITION) + ")"
GROUP = re.compile(rf"\b(a|an|two|three) (small|large) {COLOUR} {SHAPE} {PLACE}")
PLACE_FIRST = re.compile(rf"{PLACE} there (?:is|are) (a|an|two|three) (small|large) {COLOUR} {SHAPE}", re.IGNORECASE)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A 30-scene world, with the texts its tokenizer was trained on."""
    seen = {}
    original = synthetic.train_world_tokenizer

    def spy(texts, out_dir, vocab_size):
        seen["texts"] = list(texts)
        return original(texts, out_dir, vocab_size)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "train_world_tokenizer", spy)
        paths = generate_world(tmp_path_factory.mktemp("world") / "w", **WORLD)
    paths["tokenizer_texts"] = seen["texts"]
    return paths


@pytest.fixture(scope="session")
def world_again(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("again") / "w", **WORLD)


@pytest.fixture(scope="session")
def world_other_seed(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("other") / "w", **dict(WORLD, seed=4))


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def scenes_by(world, key: str) -> dict:
    """Scene metadata of every split, keyed by one of its id fields."""
    return {s[key]: s for split in ("train", "val", "test") for s in jsonl(world["scenes"] / f"{split}.jsonl")}


def count_of(scene: dict, shape: str, colour: str | None = None) -> int:
    return sum(g["count"] for g in scene["groups"] if g["shape"] == shape and colour in (None, g["colour"]))


def group_at(scene: dict, position: str):
    return next((g for g in scene["groups"] if g["position"] == position), None)


# ---------------------------------------------------------------------------------------------------------------
# determinism and layout

def test_same_seed_gives_identical_bytes(world, world_again):
    first, second = all_files(world["root"]), all_files(world_again["root"])
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    assert any(name.startswith("images/") for name in first) and "tokenizer/tokenizer.json" in first


def test_different_seed_gives_different_world(world, world_other_seed):
    first, other = all_files(world["root"]), all_files(world_other_seed["root"])
    for name in ("scenes/train.jsonl", "pretrain/image_text/part-00000.jsonl",
                 "iglue/datasets/XVNLI/annotations/de/test.jsonl"):
        assert first[name] != other[name], name


def test_every_written_file_follows_its_schema(world):
    formats = {check_file(path, world["root"]) for path in world["files"]}
    assert formats >= {"xvnli", "gqa_raw_dict", "gqa_list", "gqa_answer_vocab", "marvl", "nlvr2", "xflickrco",
                       "flickr30k_ann", "wit", "retrieval_json", "nlvr_json", "pretrain_image_text",
                       "pretrain_regions", "pretrain_para_text", "pretrain_image_text_tar", "pretrain_regions_tar",
                       "pretrain_tar_stats"}
    assert len(world["pretrain_image_text"]) == len(world["pretrain_para_text"]) == 4
    assert len(world["pretrain_image_text_tar"]) == len(world["pretrain_regions_tar"]) == 4


def test_tar_shards_hold_the_samples_of_the_jsonl_shards(world):
    from tests.dataset.schemas import read_jsonl, read_tar_records

    for jsonl_paths, tar_paths in ((world["pretrain_image_text"], world["pretrain_image_text_tar"]),
                                   (world["pretrain_regions"], world["pretrain_regions_tar"])):
        for jsonl_path, tar_path in zip(jsonl_paths, tar_paths):
            assert tar_path.name == jsonl_path.name.replace(".jsonl", ".tar")
            assert [r for _, r in read_tar_records(tar_path)] == [r for _, r in read_jsonl(jsonl_path)]


def test_real_samples_follow_the_same_schemas(iglue_sample):
    root = iglue_sample / "datasets"
    formats = {check_file(path, root) for path in sorted(root.rglob("*.json*"))}
    assert formats == {"xvnli", "gqa_raw_dict", "gqa_list", "gqa_answer_vocab", "gqa_answer_list", "marvl", "nlvr2",
                       "xflickrco", "flickr30k_ann", "wit"}


def test_synthetic_iglue_uses_the_real_file_names(world, iglue_sample):
    """Every real sample file in a language the world has exists at the same relative path."""
    root = iglue_sample / "datasets"
    foreign = re.compile(r"(^|[/_-])(ar|id|tr|es|ru|sw|ta)([/_.-]|$)")
    real = [p.relative_to(root).as_posix() for p in root.rglob("*.json*")]
    wanted = [rel for rel in real if not foreign.search(rel)]
    assert len(wanted) > 30
    assert [rel for rel in wanted if not (world["iglue"] / rel).is_file()] == []


def test_json_files_keep_the_real_serialisation(world, iglue_sample):
    """xGQA/GQA dicts are one-line json.dumps; testdev.json is indent=4; neither ends with a newline."""
    for root in (world["iglue"], iglue_sample / "datasets"):
        for rel, indent in (("xGQA/annotations/few_shot/de/dev.json", None), ("gqa/annotations/testdev.json", 4),
                            ("gqa/annotations/trainval_ans2label.json", 4)):
            text = (root / rel).read_text(encoding="utf-8")
            assert json.dumps(json.loads(text), indent=indent) == text, (root, rel)
    val_en = (world["iglue"] / "wit/annotations/val_en.jsonl").read_text(encoding="utf-8")
    assert "\\/" in val_en and not val_en.endswith("\n")


def test_referenced_images_exist(world):
    root, images = world["root"], world["images"]
    for entry in json.loads((world["multi30k"] / "test_2016_flickr.de.json").read_text(encoding="utf-8")):
        assert (images / entry["image"]).is_file()
    for entry in json.loads((world["mscoco"] / "en.train.json").read_text(encoding="utf-8")):
        assert (images / entry["image"]).is_file()
    for entry in json.loads((world["nlvr_en"] / "nlvr_train.json").read_text(encoding="utf-8")):
        assert all((images / "nlvr2" / p).is_file() for p in entry["images"])
    for r in jsonl(world["iglue"] / "XVNLI/annotations/fr/test.jsonl"):
        assert (images / "flickr30k-images" / f"{r['Flikr30kID']}.jpg").is_file()
    for r in jsonl(world["iglue"] / "xFlickrCO/annotations/ja/test.jsonl"):
        folder = "val2014" if r["img_path"].startswith("COCO") else "flickr30k-images"
        assert (images / folder / r["img_path"]).is_file()
    for r in jsonl(world["iglue"] / "marvl/zero_shot/annotations/marvl-zh.jsonl"):
        assert (images / "marvl-images/zh/images" / r["concept"] / r["left_img"]).is_file()
    for r in jsonl(world["iglue"] / "marvl/few_shot/annotations/marvl-cs_train10x2.jsonl"):
        assert (images / "marvl_fewshot/cs/all" / Path(r["right_img"]).name).is_file()
    for qid, q in json.loads((world["iglue"] / "xGQA/annotations/few_shot/ja/test.json").read_text()).items():
        assert (images / "gqa" / f"{q['imageId']}.jpg").is_file()
    urls = {line.split("\t")[0] for f in (images / "wit_test").glob("*.csv") for line in f.open()}
    assert {r["image_url"] for r in jsonl(world["iglue"] / "wit/annotations/test_ja.jsonl")} <= urls
    assert (root / "images/coco/val2014").is_dir()


def test_xflickrco_test_has_flickr_then_coco_in_the_same_order_in_every_language(world):
    ids = {lang: [r["id"] for r in jsonl(world["iglue"] / f"xFlickrCO/annotations/{lang}/test.jsonl")]
           for lang in ("en", "de", "zh")}
    assert ids["en"] == ids["de"] == ids["zh"]
    kinds = [type(i) for i in ids["en"]]
    assert kinds == sorted(kinds, key=lambda k: k is int) and kinds[0] is str and kinds[-1] is int


def test_xvnli_has_some_no_consensus_labels(tmp_path):
    paths = generate_world(tmp_path / "w", images=120, languages=("en",), seed=1, vocab_size=200)
    labels = [r["gold_label"] for r in jsonl(paths["iglue"] / "XVNLI/annotations/en/train.jsonl")]
    assert labels.count("-") >= 1
    assert {"entailment", "neutral", "contradiction"} <= set(labels)


# ---------------------------------------------------------------------------------------------------------------
# text is true of the scene

def parse_groups(caption: str) -> set:
    """(count, size, colour, shape, position) of every "two small red circles on the left" (either order)."""
    groups = {(NUMBER[n], size, colour, shape, POSITION[place]) for n, size, colour, shape, place
              in GROUP.findall(caption)}
    return groups | {(NUMBER[n], size, colour, shape, POSITION[place.lower()]) for place, n, size, colour, shape
                     in PLACE_FIRST.findall(caption)}


def scene_groups(scene: dict) -> set:
    return {(g["count"], g["size"], g["colour"], g["shape"], g["position"]) for g in scene["groups"]}


def test_english_captions_describe_their_scene(world):
    by_number = scenes_by(world, "number")
    for split in ("train", "test_2016_flickr"):
        for entry in json.loads((world["multi30k"] / f"{split}.en.json").read_text(encoding="utf-8")):
            captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
            for caption in captions:
                assert parse_groups(caption) == scene_groups(by_number[entry["image_id"]]), caption
    by_flickr = scenes_by(world, "flickr_id")
    for r in jsonl(world["iglue"] / "flickr30k/annotations/train_ann.jsonl"):
        assert len(set(r["sentences"])) == 5
        for caption in r["sentences"]:
            assert parse_groups(caption) == scene_groups(by_flickr[r["id"]]), caption


RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
       "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (25, 25, 25)}


def test_images_show_the_objects_in_their_boxes(world):
    from PIL import Image

    for scene in jsonl(world["scenes"] / "train.jsonl"):
        image = Image.open(world["images"] / "flickr30k-images" / f"{scene['flickr_id']}.jpg").convert("RGB")
        assert image.size == (scene["image_size"], scene["image_size"])
        for group in scene["groups"]:
            for x, y, w, h in group["boxes"]:
                pixel = image.getpixel((x + w // 2, y + h // 2))
                assert max(abs(a - b) for a, b in zip(pixel, RGB[group["colour"]])) < 45, (scene["index"], group)


def test_region_records_box_and_name_every_object(world):
    by_image = {(world["images"] / "flickr30k-images" / f"{s['flickr_id']}.jpg").read_bytes(): s
                for s in jsonl(world["scenes"] / "train.jsonl")}
    records = [r for path in world["pretrain_regions"] for r in jsonl(path)]
    assert len(records) == len(by_image)
    for r in records:
        scene = by_image[base64.b64decode(r["binary"])]
        expected = []
        for g in scene["groups"]:
            xs = [b[0] for b in g["boxes"]] + [b[0] + b[2] for b in g["boxes"]]
            ys = [b[1] for b in g["boxes"]] + [b[1] + b[3] for b in g["boxes"]]
            words = f"{g['size']} {g['colour']}"
            plural = "crosses" if g["shape"] == "cross" else g["shape"] + "s"
            noun = {1: f"a {words} {g['shape']}", 2: f"two {words} {plural}", 3: f"three {words} {plural}"}
            expected.append(([min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], noun[g["count"]]))
            if g["count"] > 1:
                expected += [(box, noun[1]) for box in g["boxes"]]
        got = [(e["bb"], e["caption"]["en"]) for e in r["elems"]]
        assert len(got) == len(expected)
        for (box, text), (want_box, want_text) in zip(got, expected):
            assert box == want_box and text.startswith(want_text), (text, want_text)


def xvnli_label(scene: dict, hypothesis: str) -> str:
    first, _, rest = hypothesis.partition(". ")
    absent = re.fullmatch(rf"There is no {SHAPE} in the picture\.?", first)
    if absent:
        holds = count_of(scene, absent.group(1)) == 0
    else:
        m = re.fullmatch(rf"There (?:is|are) (a|an|two|three) (?:(small|large) )?(?:{COLOUR} )?{SHAPE} {PLACE}\.?",
                         first)
        assert m, hypothesis
        number, size, colour, shape, place = m.groups()
        g = group_at(scene, POSITION[place])
        holds = (g is not None and g["shape"] == shape and g["count"] == NUMBER[number]
                 and colour in (None, g["colour"]) and size in (None, g["size"]))
    if not holds:
        return "contradiction"
    return "neutral" if rest else "entailment"


def test_xvnli_labels_follow_from_the_scene(world):
    scenes = scenes_by(world, "flickr_id")
    checked = 0
    for name in ("en/train.jsonl", "en/dev.jsonl", "en/test.jsonl"):
        for r in jsonl(world["iglue"] / "XVNLI/annotations" / name):
            label = r["pairID"][-1]  # the intended label letter; gold_label may be '-'
            derived = xvnli_label(scenes[r["Flikr30kID"]], r["sentence2"])
            assert derived[0] == label and r["gold_label"] in (derived, "-"), r
            checked += 1
    assert checked == 3 * 30


def gqa_answer(scene: dict, question: str) -> str:
    m = re.fullmatch(rf"What colour (?:is the shape|are the shapes) {PLACE}\?", question)
    if m:
        return group_at(scene, POSITION[m.group(1)])["colour"]
    m = re.fullmatch(rf"What shape is {PLACE}\?", question)
    if m:
        return group_at(scene, POSITION[m.group(1)])["shape"]
    m = re.fullmatch(rf"Is there (?:a|an) {COLOUR} {SHAPE}\?", question)
    if m:
        return "yes" if count_of(scene, m.group(2), m.group(1)) else "no"
    m = re.fullmatch(rf"(?:Is|Are) the {SHAPE} (?:{PLACE} or {PLACE}|(small) or large)\?", question)
    assert m, question
    owners = [g for g in scene["groups"] if g["shape"] == m.group(1)]
    assert len(owners) == 1, question  # the question must be unambiguous
    return owners[0]["size"] if m.group(4) else owners[0]["position"]


def test_gqa_answers_follow_from_the_scene(world):
    scenes = scenes_by(world, "gqa_image_id")
    for name in ("train.json", "valid.json", "testdev.json"):
        for q in json.loads((world["iglue"] / "gqa/annotations" / name).read_text()):
            assert [gqa_answer(scenes[q["img_id"]], q["sent"])] == list(q["label"]), q
    answers = json.loads((world["iglue"] / "gqa/annotations/trainval_ans2label.json").read_text())
    for lang in ("en", "fr", "zh"):
        for qid, q in json.loads((world["iglue"] / f"xGQA/annotations/few_shot/{lang}/test.json").read_text()).items():
            assert q["answer"] in answers


def nlvr_truth(left: dict, right: dict, sentence: str) -> bool:
    scenes = {"left": left, "right": right}
    m = re.fullmatch(rf"The (left|right) image contains (a|an|two|three) {COLOUR} {SHAPE}\.", sentence)
    if m:
        return count_of(scenes[m.group(1)], m.group(4), m.group(3)) == NUMBER[m.group(2)]
    m = re.fullmatch(rf"Both images contain (?:a|an) {SHAPE}\.", sentence)
    if m:
        return count_of(left, m.group(1)) > 0 and count_of(right, m.group(1)) > 0
    m = re.fullmatch(rf"There are more {SHAPE} in the (left|right) image than in the (left|right) image\.", sentence)
    assert m and m.group(2) != m.group(3), sentence
    return count_of(scenes[m.group(2)], m.group(1)) > count_of(scenes[m.group(3)], m.group(1))


def test_nlvr_and_marvl_labels_follow_from_the_scenes(world):
    scenes = scenes_by(world, "number")
    labels = []
    for name in ("train", "dev", "test"):
        for r in jsonl(world["iglue"] / f"nlvr2/annotations/{name}.jsonl"):
            left, right = (scenes[int(re.search(r"/(\d+)\.png$", r[k]).group(1))] for k in ("left_url", "right_url"))
            assert str(nlvr_truth(left, right, r["sentence"])) == r["label"], r
            labels.append(r["label"])
    assert labels.count("True") == labels.count("False")
    english = jsonl(world["iglue"] / "marvl/zero_shot/annotations_machine-translate/marvl-de_gmt.jsonl")
    for r in english:
        left, right = (scenes[int(re.search(r"-(\d+)\.jpg$", r[k]).group(1))] for k in ("left_img", "right_img"))
        assert nlvr_truth(left, right, r["caption"]) is r["label"], r
    assert [r["label"] for r in jsonl(world["iglue"] / "marvl/zero_shot/annotations/marvl-de.jsonl")] == \
        [r["label"] for r in english]


def test_cjk_texts_have_no_spaces(world):
    texts = []
    for path in world["pretrain_image_text"]:
        for r in jsonl(path):
            for d in r["caption"] if isinstance(r["caption"], list) else [r["caption"]]:
                texts += [d["ja"], d["zh"]]
    for lang in ("ja", "zh"):
        texts += [r["sentence2"] for r in jsonl(world["iglue"] / f"XVNLI/annotations/{lang}/test.jsonl")]
        texts += [r["caption"] for r in jsonl(world["iglue"] / f"marvl/zero_shot/annotations/marvl-{lang}.jsonl")]
        wit = jsonl(world["iglue"] / f"wit/annotations/test_{lang}.jsonl")
        texts += [r["caption_reference_description"] for r in wit]
        texts += [q["question"] for q in json.loads(
            (world["iglue"] / f"xGQA/annotations/few_shot/{lang}/dev.json").read_text()).values()]
    assert len(texts) > 100
    assert [t for t in texts if re.search(r"\s", t)] == []


# ---------------------------------------------------------------------------------------------------------------
# held-out split and tokenizer

def heldout_captions(world) -> set:
    captions = set()
    for path in world["multi30k"].glob("test_2016_flickr.*.json"):
        captions |= {c for e in json.loads(path.read_text(encoding="utf-8")) for c in e["caption"]}
    for path in (world["iglue"] / "xFlickrCO/annotations").glob("*/test.jsonl"):
        captions |= {s for r in jsonl(path) for s in r["sentences"]}
    return captions


def training_texts(world) -> set:
    texts = set()
    for path in world["pretrain_image_text"] + world["pretrain_regions"]:
        for r in jsonl(path):
            for d in r.get("caption", []) if isinstance(r.get("caption"), list) else [r.get("caption", {})]:
                texts |= set(d.values())
            texts |= {t for e in r.get("elems", []) for t in e["caption"].values()}
    for path in world["pretrain_para_text"]:
        texts |= {t for r in jsonl(path) for t in (r["source_text"], r["target_text"])}
    for path in world["multi30k"].glob("train.*.json"):
        texts |= {e["caption"] for e in json.loads(path.read_text(encoding="utf-8"))}
    for path in (world["iglue"] / "xFlickrCO/annotations").glob("*/train_*.jsonl"):
        texts |= {s for r in jsonl(path) for s in r["sentences"]}
    texts |= {s for r in jsonl(world["iglue"] / "flickr30k/annotations/train_ann.jsonl") for s in r["sentences"]}
    return texts


def test_heldout_scenes_never_appear_in_training_files(world):
    heldout, training = heldout_captions(world), training_texts(world)
    assert len(heldout) >= 6 * 6 and len(training) > 100
    assert heldout & training == set()
    test_images = {p.read_bytes() for p in (world["images"] / "val2014").glob("*.jpg")}
    test_images |= {(world["images"] / "flickr30k-images" / f"{s['flickr_id']}.jpg").read_bytes()
                    for s in jsonl(world["scenes"] / "test.jsonl")}
    trained = {base64.b64decode(r["binary"]) for path in world["pretrain_image_text"] for r in jsonl(path)}
    assert len(test_images) == 6 and test_images & trained == set()
    test_contents = [frozenset(scene_groups(s)) for s in jsonl(world["scenes"] / "test.jsonl")]
    train_contents = {frozenset(scene_groups(s)) for s in jsonl(world["scenes"] / "train.jsonl")}
    assert len(set(test_contents)) == len(test_contents) and not set(test_contents) & train_contents


def test_tokenizer_trained_on_training_text_only(world):
    from dataset.synthetic.world import normalise_for_tokenizer

    seen = set(world["tokenizer_texts"])
    assert {normalise_for_tokenizer(t) for t in training_texts(world)} & {normalise_for_tokenizer(t) for t in seen}
    assert seen & heldout_captions(world) == set()
    assert set(world["tokenizer_texts"]) <= training_texts(world) | _task_training_texts(world)


def _task_training_texts(world) -> set:
    texts = set()
    for path in (world["iglue"] / "XVNLI/annotations").glob("*/train*.jsonl"):
        texts |= {t for r in jsonl(path) for t in (r["sentence1"], r["sentence2"])}
    texts |= {q["sent"] for q in json.loads((world["iglue"] / "gqa/annotations/train.json").read_text())}
    for path in (world["iglue"] / "xGQA/annotations/few_shot").glob("*/train_48.json"):
        texts |= {q["question"] for q in json.loads(path.read_text()).values()}
    texts |= {r["sentence"] for r in jsonl(world["iglue"] / "nlvr2/annotations/train.jsonl")}
    for path in (world["iglue"] / "marvl/few_shot/annotations").glob("*.jsonl"):
        texts |= {r["caption"] for r in jsonl(path)}
    texts |= {r["caption_reference_description"] for r in jsonl(world["iglue"] / "wit/annotations/train_en.jsonl")}
    for path in world["mscoco"].glob("*.train.json"):
        texts |= {e["caption"] for e in json.loads(path.read_text(encoding="utf-8"))}
    return texts


def test_tokenizer_loads_offline_in_xlmr_layout_and_covers_heldout_text(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(world["tokenizer"]))
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1 and 150 <= len(tok) <= 400
    for caption in heldout_captions(world):
        ids = tok(re.sub(r"[,.'!?\"()*#:;~/-]", " ", caption.lower()))["input_ids"]  # as pre_caption
        assert tok.unk_token_id not in ids, caption
        assert len(ids) > 4


# ---------------------------------------------------------------------------------------------------------------
# ensure_world, atomic writing, CLI

SMALL = dict(images=12, languages=("en", "de"), vocab_size=120)


def test_ensure_world_reuses_a_matching_world_and_regenerates_otherwise(tmp_path, monkeypatch):
    out = tmp_path / "cache" / "world"
    first = ensure_world(out, **SMALL)
    stamp = first["manifest"].stat().st_mtime_ns
    monkeypatch.setattr(synthetic, "generate_world", lambda *a, **k: pytest.fail("regenerated a matching world"))
    assert ensure_world(out, **SMALL)["files"] == first["files"]
    monkeypatch.undo()
    changed = ensure_world(out, **dict(SMALL, seed=7))
    assert changed["params"]["seed"] == 7 and changed["manifest"].stat().st_mtime_ns != stamp
    (out / "iglue/datasets/nlvr2/annotations/dev.jsonl").unlink()  # an incomplete world is regenerated
    assert read_manifest(out) is None
    assert (ensure_world(out, **dict(SMALL, seed=7))["root"] / "iglue/datasets/nlvr2/annotations/dev.jsonl").exists()


def test_interrupted_generation_leaves_the_previous_world_untouched(tmp_path, monkeypatch):
    out = tmp_path / "world"
    generate_world(out, **SMALL)
    before = all_files(out)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "train_world_tokenizer", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_world(out, **dict(SMALL, seed=9))
    assert all_files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="'xx'"):
        synthetic.world_params(languages="en,xx")
    with pytest.raises(ValueError, match="must include 'en'"):
        synthetic.world_params(languages=("de", "fr"))
    with pytest.raises(ValueError, match="images=6"):
        synthetic.world_params(images=6)


def test_refuses_to_replace_a_folder_that_is_not_a_world(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic world"):
        generate_world(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_cli_writes_a_world_and_reports_errors(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "w"), "--images", "12", "--languages", "en,ja", "--vocab-size", "120"]) == 0
    manifest = json.loads((tmp_path / "w/manifest.json").read_text())
    assert manifest["params"]["languages"] == ["en", "ja"]
    assert (tmp_path / "w/iglue/datasets/XVNLI/annotations/ja/test.jsonl").is_file()
    assert main(["--out", str(tmp_path / "bad"), "--languages", "en,klingon"]) == 2
    assert "klingon" in capsys.readouterr().err
