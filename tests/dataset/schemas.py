"""Schema checks for the on-disk formats of the real data (IGLUE, retrieval json, pre-training shards).

One check per format, written from the real IGLUE samples and the specs. They are applied both to the real samples
(../shared/data/iglue-sample) and to the synthetic world, so the synthetic files follow the rules the real ones do.
``check_file(path, root)`` picks the check from the file's path relative to ``root`` and returns the format name.
Every failure raises ``SchemaError`` naming the file and, for line formats, the line.
"""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

XVNLI_LABELS = {"entailment", "neutral", "contradiction", "-"}
GQA_RAW_KEYS = {"semantic", "entailed", "equivalent", "question", "imageId", "isBalanced", "groups", "answer",
                "semanticStr", "annotations", "types", "fullAnswer"}
MARVL_KEYS = {"concept", "language", "caption", "left_img", "right_img", "annotator_info", "chapter", "id", "label"}
NLVR2_KEYS = {"validation", "sentence", "left_url", "writer", "label", "right_url", "synset", "query", "identifier",
              "extra_validations"}
WIT_KEYS = {"image_url", "caption_reference_description", "language", "page_url", "wit_ix"}
WIT_TEST_KEYS = WIT_KEYS | {"image_idx", "meta_url"}


class SchemaError(AssertionError):
    """A file does not follow its format."""


def _fail(where: str, message: str):
    raise SchemaError(f"{where}: {message}")


def _expect(condition: bool, where: str, message: str) -> None:
    if not condition:
        _fail(where, message)


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """(``file:line``, record) for every line; every line must be a JSON object."""
    records = []
    text = Path(path).read_text(encoding="utf-8")
    _expect(not text.startswith("\ufeff"), str(path), "starts with a byte-order mark")
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            _fail(where, f"not JSON ({err})")
        _expect(isinstance(record, dict), where, "not a JSON object")
        records.append((where, record))
    _expect(bool(records), str(path), "no records")
    return records


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:
        _fail(str(path), f"not JSON ({err})")


def _text(value, where: str, key: str) -> None:
    _expect(isinstance(value, str) and value.strip() != "", where, f"{key} must be a non-empty string, got {value!r}")


def _keys(record: dict, required: set, where: str, exact: bool = True) -> None:
    missing = required - set(record)
    _expect(not missing, where, f"missing keys {sorted(missing)}")
    extra = set(record) - required
    _expect(not exact or not extra, where, f"unexpected keys {sorted(extra)}")


# ---------------------------------------------------------------------------------------------------------------
# IGLUE formats

def check_xvnli_jsonl(path: Path) -> None:
    """XVNLI: gold_label (3 labels or '-'), sentence1/2, captionID '<id>.jpg#k', pairID, Flikr30kID (sic)."""
    for where, r in read_jsonl(path):
        _keys(r, {"gold_label", "sentence1", "sentence2", "captionID", "pairID", "Flikr30kID"}, where)
        _expect(r["gold_label"] in XVNLI_LABELS, where, f"gold_label {r['gold_label']!r}")
        _text(r["sentence1"], where, "sentence1")
        _text(r["sentence2"], where, "sentence2")
        image = r["Flikr30kID"]
        _expect(isinstance(image, str) and image.isdigit(), where, f"Flikr30kID {image!r} is not a digit string")
        _expect(r["captionID"].startswith(f"{image}.jpg#"), where, f"captionID {r['captionID']!r} vs {image}")
        _expect(r["pairID"].startswith(r["captionID"]), where, f"pairID {r['pairID']!r} vs {r['captionID']!r}")


def semantic_to_str(semantic: list[dict]) -> str:
    return "->".join(f"{s['operation']}: {s['argument']}" + (f" {s['dependencies']}" if s["dependencies"] else "")
                     for s in semantic)


def check_gqa_raw_dict(path: Path) -> None:
    """Raw GQA / xGQA: a dict keyed by question id of records with the raw GQA fields."""
    data = read_json(path)
    _expect(isinstance(data, dict) and data, str(path), "must be a non-empty dict keyed by question id")
    for qid, r in data.items():
        where = f"{path}[{qid}]"
        _expect(qid.isdigit(), where, "question id is not a digit string")
        _keys(r, GQA_RAW_KEYS, where)
        for key in ("question", "imageId", "answer", "fullAnswer"):
            _text(r[key], where, key)
        _expect(isinstance(r["isBalanced"], bool), where, "isBalanced must be a bool")
        _expect(isinstance(r["semantic"], list) and r["semantic"], where, "semantic must be a non-empty list")
        for step in r["semantic"]:
            _expect(set(step) == {"operation", "dependencies", "argument"}, where, f"semantic step {step}")
            _expect(all(isinstance(d, int) for d in step["dependencies"]), where, "dependencies must be ints")
        _expect(r["semanticStr"] == semantic_to_str(r["semantic"]), where, "semanticStr does not render semantic")
        _expect(set(r["types"]) == {"detailed", "semantic", "structural"}, where, f"types {r['types']}")
        _expect(set(r["groups"]) == {"global", "local"}, where, f"groups {r['groups']}")
        _expect(set(r["annotations"]) == {"answer", "question", "fullAnswer"}, where, "annotations keys")
        _expect(isinstance(r["entailed"], list) and isinstance(r["equivalent"], list), where, "entailed/equivalent")


def check_gqa_list(path: Path) -> None:
    """GQA list format (LXMERT style): [{img_id, label: {answer: score}, question_id, sent}]."""
    data = read_json(path)
    _expect(isinstance(data, list) and data, str(path), "must be a non-empty list")
    for k, r in enumerate(data):
        where = f"{path}[{k}]"
        _expect(isinstance(r, dict), where, "not an object")
        _keys(r, {"img_id", "label", "question_id", "sent"}, where)
        _text(r["img_id"], where, "img_id")
        _text(r["sent"], where, "sent")
        _expect(isinstance(r["question_id"], str) and r["question_id"].isdigit(), where, "question_id")
        _expect(isinstance(r["label"], dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                                     for k, v in r["label"].items()), where, f"label {r['label']}")


def check_gqa_answer_vocab(ans2label_path: Path) -> None:
    """trainval_ans2label.json (answer -> index, indices 0..n-1) agrees with trainval_label2ans.json (a list)."""
    ans2label = read_json(ans2label_path)
    label2ans_path = Path(ans2label_path).with_name("trainval_label2ans.json")
    label2ans = read_json(label2ans_path)
    _expect(isinstance(ans2label, dict) and ans2label, str(ans2label_path), "must be a non-empty dict")
    _expect(sorted(ans2label.values()) == list(range(len(ans2label))), str(ans2label_path),
            "indices are not 0..n-1")
    _expect(isinstance(label2ans, list) and len(label2ans) == len(ans2label), str(label2ans_path),
            f"must be a list of {len(ans2label)} answers")
    for answer, index in ans2label.items():
        _expect(label2ans[index] == answer, str(label2ans_path), f"entry {index} is not {answer!r}")


def check_marvl_jsonl(path: Path) -> None:
    """MaRVL: bool labels; zero-shot left_img is a bare file name, few-shot one is '<concept>/<file>'."""
    few_shot = "few_shot" in Path(path).parts
    language = re.match(r"marvl-([a-z]+)", Path(path).name).group(1)
    for where, r in read_jsonl(path):
        _keys(r, MARVL_KEYS, where)
        _expect(isinstance(r["label"], bool), where, f"label {r['label']!r} must be a JSON bool")
        _expect(r["language"] == language, where, f"language {r['language']!r} in a {language} file")
        _expect(re.fullmatch(rf"{language}-\d+", r["id"]) is not None, where, f"id {r['id']!r}")
        _expect(re.fullmatch(r"\d+-.+", r["concept"]) is not None, where, f"concept {r['concept']!r}")
        _text(r["caption"], where, "caption")
        _expect(isinstance(r["annotator_info"], dict), where, "annotator_info must be an object")
        number = r["concept"].split("-")[0]
        for key in ("left_img", "right_img"):
            image = r[key]
            if few_shot:
                _expect(image.startswith(r["concept"] + "/") and image.count("/") == 1, where,
                        f"few-shot {key} {image!r} must be '<concept>/<file>'")
            else:
                _expect("/" not in image and image.startswith(number + "-"), where,
                        f"zero-shot {key} {image!r} must be a bare '<concept number>-...' file name")


def check_nlvr2_jsonl(path: Path) -> None:
    """NLVR2: string labels "True"/"False", identifier '<split>-<set>-<pair>-<sentence>'."""
    for where, r in read_jsonl(path):
        _keys(r, NLVR2_KEYS, where)
        _expect(r["label"] in ("True", "False"), where, f"label {r['label']!r} must be the string True/False")
        _text(r["sentence"], where, "sentence")
        _expect(re.fullmatch(r"[a-z0-9]+-\d+-\d+-\d+", r["identifier"]) is not None, where,
                f"identifier {r['identifier']!r}")
        for key in ("validation", "extra_validations"):
            _expect(isinstance(r[key], dict) and all(v in ("True", "False") for v in r[key].values()), where, key)


def check_xflickrco_jsonl(path: Path, captions: int | None = None) -> None:
    """xFlickr&CO / Flickr30K: {sentences, id, img_path}; Flickr30K ids are strings ('<id>.jpg'), COCO ids ints."""
    for where, r in read_jsonl(path):
        _keys(r, {"sentences", "id", "img_path"}, where)
        sentences = r["sentences"]
        _expect(isinstance(sentences, list) and sentences and all(isinstance(s, str) for s in sentences), where,
                "sentences must be a non-empty list of strings")
        _expect(captions is None or len(sentences) == captions, where, f"{len(sentences)} sentences, not {captions}")
        image = r["img_path"]
        if image.startswith("COCO_val2014_"):
            _expect(isinstance(r["id"], int) and int(image[13:-4]) == r["id"], where,
                    f"COCO id {r['id']!r} vs img_path {image!r}")
        else:
            _expect(isinstance(r["id"], str) and image == f"{r['id']}.jpg", where,
                    f"Flickr30K id {r['id']!r} vs img_path {image!r}")


def check_flickr30k_ann(path: Path) -> None:
    """Flickr30K annotations: the xFlickr&CO format with five captions per image."""
    check_xflickrco_jsonl(path, captions=5)


def check_wit_jsonl(path: Path) -> None:
    """WIT: several captions per image; test files also carry image_idx and meta_url; language = file language."""
    name = Path(path).name
    language = re.match(r"(?:test|val|train)_([a-z]+)", name).group(1)
    keys = WIT_TEST_KEYS if name.startswith("test") else WIT_KEYS
    for where, r in read_jsonl(path):
        _keys(r, keys, where)
        _expect(r["language"] == language, where, f"language {r['language']!r} in a {language} file")
        _text(r["caption_reference_description"], where, "caption_reference_description")
        _expect(r["image_url"].startswith("http"), where, f"image_url {r['image_url']!r}")
        _expect("image_idx" not in keys or isinstance(r["image_idx"], int), where, "image_idx must be an int")


# ---------------------------------------------------------------------------------------------------------------
# user-prepared fine-tuning json and pre-training shards

def check_retrieval_json(path: Path) -> None:
    """Multi30K/COCO json: train = one caption per entry; val/test = a caption list per image."""
    data = read_json(path)
    _expect(isinstance(data, list) and data, str(path), "must be a non-empty list")
    train = ".train." in Path(path).name or Path(path).name.startswith("train.")
    for k, r in enumerate(data):
        where = f"{path}[{k}]"
        _keys(r, {"caption", "image", "image_id"}, where)
        _text(r["image"], where, "image")
        if train:
            _text(r["caption"], where, "caption")
        else:
            _expect(isinstance(r["caption"], list) and r["caption"], where, "caption must be a non-empty list")
            for c in r["caption"]:
                _text(c, where, "caption")


def check_nlvr_json(path: Path) -> None:
    """NLVR2 json for the fine-tuning loader: [{images: [left, right], sentence, label}]."""
    data = read_json(path)
    _expect(isinstance(data, list) and data, str(path), "must be a non-empty list")
    for k, r in enumerate(data):
        where = f"{path}[{k}]"
        _keys(r, {"images", "sentence", "label"}, where)
        _expect(isinstance(r["images"], list) and len(r["images"]) == 2, where, "images must be [left, right]")
        _text(r["sentence"], where, "sentence")
        _expect(r["label"] in ("True", "False", True, False), where, f"label {r['label']!r}")


def _caption_dict(value, where: str) -> None:
    dicts = value if isinstance(value, list) else [value]
    _expect(bool(dicts), where, "empty caption list")
    for d in dicts:
        _expect(isinstance(d, dict) and d, where, f"caption must be a language -> text dict, got {d!r}")
        for lang, text in d.items():
            _text(text, where, f"caption[{lang}]")


def _image_size(b64: str, where: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(base64.b64decode(b64, validate=True))) as image:
            return image.size
    except Exception as err:  # any decoding failure is a schema failure
        _fail(where, f"binary is not a base64 image ({err})")


def read_tar_records(path: Path) -> list[tuple[str, dict]]:
    """(``shard, member``, record) of every sample of a tar shard, its image as base64 under ``binary`` (the record
    the jsonl shard of the same sample holds)."""
    from dataset.shards import BadRecordError
    from dataset.tars import ShardedTars, TarLayout

    records = []
    for sample in ShardedTars([path], shuffle=False, layout=TarLayout(caption_required=False)).role_records(0, 0, 1):
        try:
            record = sample.parse()
        except BadRecordError as err:
            _fail(str(sample.ref), str(err))
        _expect(set(sample.members) == {"jpg", "json"}, str(sample.ref), f"members {sample.member_names()}")
        record["binary"] = base64.b64encode(record["binary"]).decode("ascii")
        records.append((str(sample.ref), record))
    return records


def read_records(path: Path) -> list[tuple[str, dict]]:
    return read_tar_records(path) if Path(path).suffix == ".tar" else read_jsonl(path)


def check_tar_stats(path: Path) -> None:
    """A tar shard's _stats.json: its ``successes`` is the number of samples the shard holds."""
    from dataset.tars import count_samples

    stats = json.loads(Path(path).read_text(encoding="utf-8"))
    shard = Path(str(path)[:-len("_stats.json")] + ".tar")
    count, error = count_samples(shard)
    _expect(error is None and stats.get("successes") == count == stats.get("count"), str(path),
            f"{stats} for a shard of {count} samples ({error or 'whole'})")


def check_pretrain_image_text(path: Path) -> None:
    """Pre-training image-text: {binary: base64 image, caption: {lang: text} or a list of such dicts}."""
    for where, r in read_records(path):
        _keys(r, {"binary", "caption"}, where)
        _image_size(r["binary"], where)
        _caption_dict(r["caption"], where)


def check_pretrain_regions(path: Path) -> None:
    """Pre-training regions: {binary, optional caption, elems: [{bb: [x, y, w, h] inside the image, caption}]}."""
    for where, r in read_records(path):
        _keys(r, {"binary", "elems"} | ({"caption"} if "caption" in r else set()), where)
        width, height = _image_size(r["binary"], where)
        if "caption" in r:
            _caption_dict(r["caption"], where)
        _expect(isinstance(r["elems"], list) and r["elems"], where, "elems must be a non-empty list")
        for elem in r["elems"]:
            _expect({"bb", "caption"} <= set(elem), where, f"element keys {sorted(elem)}")
            x, y, w, h = elem["bb"]
            _expect(w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height, where,
                    f"box {elem['bb']} outside the {width}x{height} image")
            _caption_dict(elem["caption"], where)


def check_pretrain_para_text(path: Path) -> None:
    """Parallel text: {source_text, target_text}."""
    for where, r in read_jsonl(path):
        _keys(r, {"source_text", "target_text"}, where)
        _text(r["source_text"], where, "source_text")
        _text(r["target_text"], where, "target_text")


def check_scene_metadata(path: Path) -> None:
    """Synthetic scene metadata (not a real format): groups with boxes inside the image."""
    for where, r in read_jsonl(path):
        _expect(r.get("groups"), where, "no groups")
        for g in r["groups"]:
            _expect(len(g["boxes"]) == g["count"], where, f"{g['count']} objects but {len(g['boxes'])} boxes")
            for x, y, w, h in g["boxes"]:
                _expect(w > 0 and h > 0 and x + w <= r["image_size"] and y + h <= r["image_size"], where, "box")


# (format name, path pattern relative to the data root, check)
FORMATS = (
    ("xvnli", r"XVNLI/annotations[^/]*/[^/]+/[^/]+\.jsonl", check_xvnli_jsonl),
    ("gqa_raw_dict", r"(xGQA/annotations/.+|gqa/annotations/testdev_balanced_questions)\.json",
     check_gqa_raw_dict),
    ("gqa_list", r"gqa/annotations/(train|valid|testdev)\.json", check_gqa_list),
    ("gqa_answer_vocab", r"gqa/annotations/trainval_ans2label\.json", check_gqa_answer_vocab),
    ("gqa_answer_list", r"gqa/annotations/trainval_label2ans\.json", None),  # checked with ans2label
    ("marvl", r"marvl/(zero|few)_shot/annotations[^/]*/marvl-[^/]+\.jsonl", check_marvl_jsonl),
    ("nlvr2", r"nlvr2/annotations/[^/]+\.jsonl", check_nlvr2_jsonl),
    ("xflickrco", r"xFlickrCO/annotations[^/]*/[^/]+/[^/]+\.jsonl", check_xflickrco_jsonl),
    ("flickr30k_ann", r"flickr30k/annotations/[^/]+_ann\.jsonl", check_flickr30k_ann),
    ("wit", r"wit/annotations[^/]*/[^/]+\.jsonl", check_wit_jsonl),
    ("retrieval_json", r"data/finetune/(multi30k|mscoco)/[^/]+\.json", check_retrieval_json),
    ("nlvr_json", r"data/finetune/nlvr_en/[^/]+\.json", check_nlvr_json),
    ("pretrain_image_text", r"pretrain/image_text/[^/]+\.jsonl", check_pretrain_image_text),
    ("pretrain_regions", r"pretrain/regions/[^/]+\.jsonl", check_pretrain_regions),
    ("pretrain_image_text_tar", r"pretrain/image_text_tar/[^/]+\.tar", check_pretrain_image_text),
    ("pretrain_regions_tar", r"pretrain/regions_tar/[^/]+\.tar", check_pretrain_regions),
    ("pretrain_tar_stats", r"pretrain/[^/]+_tar/[^/]+_stats\.json", check_tar_stats),
    ("pretrain_para_text", r"pretrain/para_text/[^/]+\.jsonl", check_pretrain_para_text),
    ("scene_metadata", r"scenes/[^/]+\.jsonl", check_scene_metadata),
)


def check_file(path: Path, root: Path) -> str:
    """Check ``path`` with the schema its location under ``root`` calls for; returns the format name."""
    rel = Path(path).relative_to(root).as_posix()
    for name, pattern, check in FORMATS:
        if re.search(rf"(^|/){pattern}$", rel):
            if check is not None:
                check(Path(path))
            return name
    raise SchemaError(f"{path}: no schema knows this file ({rel})")
