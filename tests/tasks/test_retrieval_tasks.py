"""Retrieval.py (Multi30K, MSCOCO), xFlickrCO.py and WIT.py: the shared pieces (language files, schedule, selection,
collate, batch cap), the batched re-rank against the one-query loop on the real model, the data of each protocol,
the real IGLUE samples end to end, and a tiny train -> --evaluate -> --fewshot round per script."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import Retrieval
import WIT
import xFlickrCO
from bench.retrieval_eval import one_query_at_a_time, reference_itm_logits
from dataset.retrieval import RetrievalEvalData, wit_image_file_name
from dataset.tokenizer import load_tokenizer
from models.factory import create_model
from models.ranking import CCLMView, encode_images, encode_texts, rerank_topk
from utils.config import ConfigError, load_config
from tasks.environment import prepare_text_encoder, resolve_data_root
from tasks.retrieval import TrainCollate, per_process_batch
from tasks.retrieval_data import choose_selection, fewshot_selection, load_standard_data, subset_eval_data
from utils.schedule import LAST, EvaluationSchedule


ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "configs/base/retrieval.yaml"
WORLD = {"synthetic": {"images": 200, "seed": 0}}
FAST = ["run.progress=false", "run.log_every=1", "run.num_workers=0"]
METRICS = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models are fastest on one thread (and the shared CPUs are oversubscribed otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world():
    """The tiny configs' synthetic world (generated once into cache/, shared with the other task tests)."""
    return resolve_data_root(WORLD)


def tiny(name, *opts):
    return load_config(ROOT / "configs/tiny" / name, list(opts), schema=SCHEMA)


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class Sets(dict):
    """Stands in for {lang: dataset} where only the keys matter."""


# --------------------------------------------------------------------------------------------- shared pieces

def test_selection_rules():
    val, test = Sets(en=1, de=1), Sets(en=1, de=1, fr=1)
    default = choose_selection({"selection": {"split": "val", "languages": None}}, val, test)
    assert (default.split, default.languages, default.metric) == ("val", ["en", "de"], "val_r_mean")
    english = choose_selection({"selection": {"split": "val", "languages": ["en"]}}, val, test)
    assert english.languages == ["en"]
    reference = choose_selection({"selection": {"split": "test", "languages": None}}, val, test)
    assert reference.metric == "test_r_mean" and "test data" in reference.describe()
    assert choose_selection({"selection": {"split": "last"}}, val, test).metric == LAST
    with pytest.raises(ConfigError, match="no val set"):
        choose_selection({"selection": {"split": "val"}}, {}, test)
    with pytest.raises(ConfigError, match=r"names \['ja'\]"):
        choose_selection({"selection": {"split": "val", "languages": ["ja"]}}, val, test)
    with pytest.raises(ConfigError, match="must be one of"):
        choose_selection({"selection": {"split": "dev"}}, val, test)


def test_fewshot_selection_uses_the_target_validation_set_when_there_is_one():
    assert fewshot_selection({}, Sets(de=1), Sets(de=1), "de").metric == "val_r_mean"
    assert fewshot_selection({"fewshot_selection": "last"}, {}, Sets(de=1), "de").metric == LAST
    reference = fewshot_selection({"fewshot_selection": "test"}, {}, Sets(de=1), "de")
    assert (reference.metric, reference.languages) == ("test_r_mean", ["de"])
    with pytest.raises(ConfigError, match="fewshot_selection"):
        fewshot_selection({"fewshot_selection": "val"}, {}, Sets(de=1), "de")


def test_train_collate_truncates_only_when_asked(world):
    tokenizer = load_tokenizer(world / "tokenizer")
    long_caption = " ".join(["a red circle on the left"] * 10)
    items = [(torch.zeros(3, 8, 8), long_caption, 4), (torch.ones(3, 8, 8), "a blue square", 9)]
    n_tokens = len(tokenizer(long_caption)["input_ids"])
    assert n_tokens > 12
    free = TrainCollate(tokenizer, 12, truncation=False)(items)           # Multi30K/COCO (spec 11 B6)
    cut = TrainCollate(tokenizer, 12, truncation=True)(items)             # xFlickr&CO/WIT
    assert free["text_ids"].shape == (2, n_tokens) and cut["text_ids"].shape == (2, 12)
    assert cut["text_ids"][0, -1] == tokenizer.sep_token_id
    assert free["text_atts"][1].sum() < n_tokens and free["text_ids"][1, -1] == tokenizer.pad_token_id
    assert free["idx"].tolist() == [4, 9] and free["image"].shape == (2, 3, 8, 8)


def test_training_batch_is_capped_to_a_process_share():
    assert per_process_batch({"batch_size_train": 8}, 100, 1) == 8
    assert per_process_batch({"batch_size_train": 128}, 100, 1) == 100    # the reference: zero steps (spec B1)
    assert per_process_batch({"batch_size_train": 16}, 100, 8) == 12
    with pytest.raises(ValueError, match="cannot be split"):
        per_process_batch({"batch_size_train": 8}, 3, 4)


def test_subset_eval_data_renumbers_the_ground_truth():
    data = RetrievalEvalData()
    for i, n in enumerate((2, 1, 3)):
        data.add_image(f"img{i}", [f"t{i}.{j}" for j in range(n)])
    part = subset_eval_data(data, range(1, 3))
    assert part.images == ["img1", "img2"] and part.texts == ["t1.0", "t2.0", "t2.1", "t2.2"]
    assert part.img2txt == [[0], [1, 2, 3]] and part.txt2img == [0, 1, 1, 1]


# --------------------------------------------------------------------------------------------- re-rank, real model

def test_batched_rerank_equals_one_query_loop_on_the_retrieval_model(world):
    config = tiny("itr_multi30k.yaml")
    config["text_encoder"] = prepare_text_encoder(config, world)
    tokenizer = load_tokenizer(config["text_encoder"])
    torch.manual_seed(0)
    model = create_model("cclm_retrieval", config, root=world).double().eval()
    for p in model.parameters():  # spread the random model's scores so that no two candidates tie
        p.data.add_(torch.randn_like(p) * 0.05)
    texts = [c for entry in json.loads((world / "data/finetune/multi30k/test_2016_flickr.de.json").read_text())[:12]
             for c in entry["caption"]]
    images = torch.randn(9, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.double)
    adapter = CCLMView(model)
    img = encode_images(adapter, [images[:4], images[4:]], torch.device("cpu"))
    txt = encode_texts(adapter, texts, tokenizer, 40, 5, torch.device("cpu"))
    k = 5
    for direction in ("i2t", "t2i"):
        expected = one_query_at_a_time(reference_itm_logits(model), img, txt, k, direction)[0]
        for batch in (1, 7, 1000):
            got, scores = rerank_topk(adapter, img, txt, k, batch, (direction,))[direction]
            assert torch.equal(got, expected), (direction, batch)
        assert (scores[:, :-1] - scores[:, 1:]).min() > 1e-9  # distinct scores: the order is well defined


# --------------------------------------------------------------------------------------------- data per protocol

def test_multi30k_all_languages_share_the_image_index(world):
    data = load_standard_data("caption_json", tiny("itr_multi30k.yaml"), world)
    train = data.train
    files = [world / f"data/finetune/multi30k/train.{lang}.json" for lang in ("en", "de", "fr", "cs")]
    entries = [e for f in files for e in json.loads(f.read_text(encoding="utf-8"))]
    assert len(train) == len(entries)
    images = {e["image_id"] for e in entries}
    assert len(train.key_to_idx) == len(images)
    by_image = {}
    for pair, entry in zip(train.pairs, entries):
        by_image.setdefault(entry["image_id"], set()).add(train.key_to_idx[pair.image_key])
    assert all(len(ids) == 1 for ids in by_image.values())  # every language's caption of an image: one idx
    assert list(data.test) == ["en", "de", "fr", "cs"] and data.selection.languages == ["en", "de", "fr", "cs"]


def test_wit_preprocessing_and_fewshot_split(world, tmp_path):
    for sub in ("iglue", "images"):
        (tmp_path / sub).symlink_to(world / sub)
    config = tiny("wit.yaml", f"data_root={tmp_path}", "synthetic=null")
    WIT.prepare_wit(config, tmp_path)
    out = tmp_path / "data/wit/annotations-bs64"
    source = world / "iglue/datasets/wit/annotations"
    for name in ("train_en.jsonl", "val_en.jsonl", "test_ja.jsonl"):
        joined, raw = jsonl(out / name), jsonl(source / name)
        assert [r["wit_ix"] for r in joined] == [r["wit_ix"] for r in raw]  # every synthetic image has pixels
        assert all(r["image_content"] for r in joined)
    raw = jsonl(source / "test_ja.jsonl")
    urls = list(dict.fromkeys(r["image_url"] for r in raw))
    few = WIT.load_fewshot_wit(dict(config, fewshot="ja,10"), tmp_path)
    assert len(few.train) == sum(r["image_url"] in urls[:10] for r in raw)
    assert len(few.train.key_to_idx) == 10
    test = few.test["ja"]
    assert len(test) == len(urls) - 10 and len(test.texts) == sum(r["image_url"] in urls[10:] for r in raw)
    assert few.selection.metric == LAST and few.details["fewshot_test_images"] == len(urls) - 10
    with pytest.raises(ConfigError, match="number of images"):
        WIT.load_fewshot_wit(dict(config, fewshot="ja,10x2"), tmp_path)


# --------------------------------------------------------------------------------------------- real IGLUE samples

def _write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (40, 30), (i * 37 % 256, i * 91 % 256, 128)).save(folder / name, format="PNG")


@pytest.fixture
def sample_root(iglue_sample, world, tmp_path):
    """The IGLUE sample under ``iglue/`` with images generated at the paths its records name."""
    (tmp_path / "iglue").symlink_to(iglue_sample)
    (tmp_path / "tokenizer").symlink_to(world / "tokenizer")
    flickr, coco = set(), set()
    for path in (iglue_sample / "datasets/xFlickrCO/annotations").rglob("*.jsonl"):
        for record in jsonl(path):
            (coco if "COCO" in record["img_path"] else flickr).add(record["img_path"])
    for record in jsonl(iglue_sample / "datasets/flickr30k/annotations/valid_ann.jsonl"):
        flickr.add(record["img_path"])
    _write_images(tmp_path / "images/flickr30k-images", sorted(flickr))
    _write_images(tmp_path / "images/val2014", sorted(coco))
    wit = {wit_image_file_name(r["image_url"]) for p in (iglue_sample / "datasets/wit/annotations").glob("*.jsonl")
           for r in jsonl(p)}
    _write_images(tmp_path / "images/wit", sorted(wit))
    return tmp_path


def sample_opts(root, *extra):
    return ["--opts", *FAST, f"data_root={root}", "synthetic=null", *extra]


def tiny_retrieval_checkpoint(random_checkpoint, config="xflickrco.yaml"):
    return random_checkpoint(ROOT / "configs/tiny" / config, SCHEMA, "cclm_retrieval")


def test_xflickrco_evaluates_the_real_sample(sample_root, iglue_sample, tmp_path, random_checkpoint):
    out = tmp_path / "out"
    payload = xFlickrCO.main(["--config", str(ROOT / "configs/tiny/xflickrco.yaml"), "--output_dir", str(out),
                              "--evaluate", "--checkpoint", tiny_retrieval_checkpoint(random_checkpoint),
                              *sample_opts(sample_root)])
    assert list(payload["languages"]) == ["en", "de", "ja"]
    for lang in ("en", "de", "ja"):
        records = jsonl(iglue_sample / f"datasets/xFlickrCO/annotations/{lang}/test.jsonl")
        assert payload["extra"]["sizes"]["test"][lang] == {"images": len(records),
                                                           "texts": sum(len(r["sentences"]) for r in records)}
    valid = jsonl(iglue_sample / "datasets/flickr30k/annotations/valid_ann.jsonl")
    assert payload["extra"]["sizes"]["val"]["en"] == {"images": len(valid), "texts": 5 * len(valid)}
    assert (out / "results.md").read_text().count("\n| ") == 5  # header, en, de, ja, IGLUE avg


def test_wit_evaluates_the_real_sample_grouped_by_image(sample_root, iglue_sample, tmp_path, random_checkpoint):
    ann = "iglue/datasets/wit/annotations"
    payload = WIT.main(["--config", str(ROOT / "configs/tiny/wit.yaml"), "--output_dir", str(tmp_path / "out"),
                        "--evaluate", "--checkpoint", tiny_retrieval_checkpoint(random_checkpoint, "wit.yaml"),
                        *sample_opts(sample_root, "wit_preproc=null", "image_root=images/wit",
                                                   f"test_file={ann}/test_{{lang}}.jsonl",
                                                   f"val_file={{en: {ann}/val_en.jsonl}}")])
    assert list(payload["languages"]) == ["en", "ar", "ja"]
    for split, lang, name in (("test", "en", "test_en"), ("test", "ar", "test_ar"), ("test", "ja", "test_ja"),
                              ("val", "en", "val_en")):
        records = [r for r in jsonl(iglue_sample / f"datasets/wit/annotations/{name}.jsonl")
                   if r["caption_reference_description"].strip()]
        assert payload["extra"]["sizes"][split][lang] == {"images": len({r["image_url"] for r in records}),
                                                          "texts": len(records)}, name


# --------------------------------------------------------------------------------------------- end to end

def run_round(module, tiny_config, out, fewshot, opts, steps=2):
    """Train -> --evaluate the best checkpoint -> --fewshot from it; returns the three payloads."""
    common = ["--config", str(ROOT / "configs/tiny" / tiny_config)]
    trained = module.main([*common, "--output_dir", str(out / "train"), "--opts", *FAST, *opts,
                           f"run.max_steps={steps}"])
    best = str(out / "train" / "checkpoint_best.pth")
    evaluated = module.main([*common, "--output_dir", str(out / "eval"), "--evaluate", "--checkpoint", best,
                             "--opts", *FAST, *opts])
    few = module.main([*common, "--output_dir", str(out / "few"), "--fewshot", fewshot, "--checkpoint", best,
                       "--opts", *FAST, f"run.max_steps={steps}"])
    return trained, evaluated, few


def check_round(out, trained, evaluated, few, languages, few_language, selection, iglue=True):
    on_disk = json.loads((out / "train" / "results.json").read_text())
    assert on_disk == trained
    assert list(trained["languages"]) == languages
    for payload in (trained, evaluated, few):
        for metrics in payload["languages"].values():
            assert list(metrics) == METRICS
            assert all(0.0 <= v <= 100.0 for v in metrics.values())
            assert metrics["r_mean"] == pytest.approx((metrics["txt_r_mean"] + metrics["img_r_mean"]) / 2)
    md = (out / "train" / "results.md").read_text()
    assert all(f"| {lang} |" in md for lang in languages)
    if iglue:
        others = [trained["languages"][lang]["r_mean"] for lang in languages if lang != "en"]
        assert trained["iglue_avg"]["r_mean"] == pytest.approx(sum(others) / len(others))
        assert "| IGLUE avg |" in md
    else:  # Multi30K / MSCOCO are not IGLUE benchmarks
        assert trained["iglue_avg"] == {} and "IGLUE avg" not in md
    assert trained["extra"]["selection_metric"] == selection and trained["extra"]["best_step"] == 2
    # the best checkpoint, evaluated on its own, gives exactly the reported rows
    assert evaluated["languages"] == trained["languages"] and evaluated["extra"]["val"] == trained["extra"]["val"]
    assert list(few["languages"]) == [few_language]
    assert few["extra"]["protocol"].startswith(f"few-shot {few_language}")


def test_retrieval_multi30k_train_evaluate_fewshot(world, tmp_path):
    opts = ["test_languages=[en,de]", "val_languages=[en,de]"]
    trained, evaluated, few = run_round(Retrieval, "itr_multi30k.yaml", tmp_path, "de,20", opts)
    check_round(tmp_path, trained, evaluated, few, ["en", "de"], "de", "val_r_mean", iglue=False)
    assert few["extra"]["selection_metric"] == "val_r_mean" and list(few["extra"]["val"]) == ["de"]
    assert few["extra"]["sizes"]["test"]["de"]["images"] == len(
        json.loads((world / "data/finetune/multi30k/test_2016_flickr.de.json").read_text()))
    assert few["extra"]["max_images"] == 20 and few["extra"]["batch_size_train"] == 16


def test_retrieval_coco_fewshot_chinese_test_file(world, tmp_path):
    few = Retrieval.main(["--config", str(ROOT / "configs/tiny/itr_coco.yaml"), "--output_dir", str(tmp_path),
                          "--fewshot", "zh,5", "--opts", *FAST, "run.max_steps=1"])
    assert list(few["languages"]) == ["zh"] and few["extra"]["train_files"][0].endswith("mscoco/zh.train.json")
    zh_test = json.loads((world / "data/finetune/mscoco/zh.test.json").read_text())
    assert few["extra"]["sizes"]["test"]["zh"] == {"images": len(zh_test),
                                                  "texts": sum(len(e["caption"]) for e in zh_test)}


def test_xflickrco_train_evaluate_fewshot(world, tmp_path):
    trained, evaluated, few = run_round(xFlickrCO, "xflickrco.yaml", tmp_path, "de,25", ["test_languages=[en,ja]"])
    check_round(tmp_path, trained, evaluated, few, ["en", "ja"], "de", "val_r_mean")
    assert list(trained["extra"]["val"]) == ["en"]  # English Flickr30K valid selects
    assert few["extra"]["selection_metric"] == LAST and few["extra"]["val"] == {}
    assert few["extra"]["train_files"][0].endswith("xFlickrCO/annotations/de/train_25.jsonl")


def test_wit_train_evaluate_fewshot(world, tmp_path):
    trained, evaluated, few = run_round(WIT, "wit.yaml", tmp_path, "ja,10", ["test_languages=[en,ja]"])
    check_round(tmp_path, trained, evaluated, few, ["en", "ja"], "ja", "val_r_mean")
    assert few["extra"]["fewshot_images"] == 10


@pytest.mark.parametrize("module, config, gmt_file", [
    (xFlickrCO, "xflickrco.yaml", "iglue/datasets/xFlickrCO/annotations_machine-translate/ja/test_gmt.jsonl"),
    (WIT, "wit.yaml", "iglue/datasets/wit/annotations_machine-translate/test_ja_gmt.jsonl")])
def test_gmt_evaluates_the_machine_translated_test_files(world, tmp_path, module, config, gmt_file,
                                                        random_checkpoint):
    """--gmt (translate-test): every test language but English, read from the machine-translated files."""
    from tasks.cli import build_config, task_parser
    from tasks.registry import task_info

    info = task_info(config.removesuffix(".yaml"))

    def built(argv):
        return build_config(info, task_parser(info, [info.name], "t").parse_args(argv), 1)

    flags = ["--config", str(ROOT / "configs/tiny" / config), "--evaluate", "--opts", *FAST, "test_languages=[en,ja]"]
    out = module.main([*flags[:3], "--gmt", "--checkpoint", tiny_retrieval_checkpoint(random_checkpoint, config),
                       "--output_dir", str(tmp_path), *flags[3:]])
    assert list(out["languages"]) == ["ja"] and out["extra"]["translate_test"] is True
    if module is WIT:
        module.prepare_wit(built([*flags, "gmt=true"]), world)
    gmt, human = (module.load_data(built(f), world).test["ja"] for f in ([*flags, "gmt=true"], flags))
    assert len(gmt.texts) == sum(len(r.get("sentences", [None])) for r in jsonl(world / gmt_file))
    assert gmt.texts != human.texts  # translated captions, not the human ones
    assert out["extra"]["sizes"]["test"]["ja"]["texts"] == len(gmt.texts)


# --------------------------------------------------------------------------------------------- configs

SPEC_TABLE = {  # spec-finetune 2.3, 3, 7.3, 8.3: batch train/test/test_text, max_tokens, k_test, lr, epochs
    "retrieval/multi30k_all.yaml": (20, 12, 64, 40, 128, 3e-5, 10),
    "retrieval/multi30k_en.yaml": (10, 6, 32, 40, 128, 3e-5, 10),
    "retrieval/multi30k_de.yaml": (10, 6, 32, 40, 128, 3e-5, 10),
    "retrieval/coco_en.yaml": (20, 12, 64, 40, 256, 3e-5, 10),
    "retrieval/coco_ja.yaml": (10, 6, 32, 40, 256, 3e-5, 10),
    "retrieval/coco_all.yaml": (10, 6, 32, 40, 256, 3e-5, 10),
    "xflickrco/xflickrco.yaml": (8, 12, 64, 80, 128, 3e-5, 10),
    "xflickrco/xflickrco_fewshot.yaml": (8, 12, 64, 80, 128, 1e-5, 60),
    "wit/wit.yaml": (8, 12, 64, 80, 128, 3e-5, 5),
}


@pytest.mark.parametrize("name", sorted(SPEC_TABLE))
def test_real_configs_carry_the_reference_hyper_parameters(name):
    c = load_config(ROOT / "configs" / name, schema=SCHEMA)
    got = (c["batch_size_train"], c["batch_size_test"], c["batch_size_test_text"], c["max_tokens"], c["k_test"],
           c["optimizer"]["lr"], c["schedular"]["epochs"])
    assert got == SPEC_TABLE[name]
    assert c["schedular"]["num_warmup_steps"] == 0.1 and c["use_one_cl_proj_only"] is False


def test_language_variants_are_small_overrides():
    en = load_config(ROOT / "configs/retrieval/multi30k_en.yaml", schema=SCHEMA)
    assert en["train_file"] == ["data/finetune/multi30k/train.en.json"]
    assert en["test_languages"] == ["en", "de", "fr", "cs"]
    assert en["selection"]["languages"] == ["en"]  # zero-shot cross-lingual: English selects
    cs = load_config(ROOT / "configs/retrieval/multi30k_cs.yaml", schema=SCHEMA)
    assert cs["val_languages"] == cs["test_languages"] == ["cs"]
    zh = load_config(ROOT / "configs/retrieval/coco_zh.yaml", schema=SCHEMA)
    assert zh["test_file"]["zh"] == "data/finetune/mscoco/zh.test.json" and zh["test_languages"] == ["zh"]
    xf = load_config(ROOT / "configs/xflickrco/xflickrco.yaml", schema=SCHEMA)
    schedule = EvaluationSchedule.from_config(xf)
    assert [e for e in range(10) if schedule.due(e, final=e == 9)] == [7, 8, 9]


@pytest.mark.slow
def test_two_processes_evaluate_exactly_as_one(world, tmp_path):
    """Queries sharded over two processes (and the gathered rows) give the one-process numbers."""
    import subprocess
    import sys

    common = ["--config", str(ROOT / "configs/tiny/itr_multi30k.yaml"), "--opts", *FAST,
              "test_languages=[en,de]", "val_languages=[en]"]
    Retrieval.main(["--output_dir", str(tmp_path / "one"), *common[:2], "--opts", *common[3:], "run.max_steps=2"])
    best = str(tmp_path / "one" / "checkpoint_best.pth")
    cmd = [sys.executable, str(ROOT / "run.py"), "--task", "itr_multi30k", "--dist", "cpu:2", "--evaluate",
           "--checkpoint", best, "--output_dir", str(tmp_path / "two"), *common]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["languages"] == one["languages"] and two["extra"]["val"] == one["extra"]["val"]


def test_wit_preprocessing_reads_zipped_annotations_once(world, tmp_path):
    import zipfile

    ann = tmp_path / "iglue/datasets/wit/annotations"
    ann.mkdir(parents=True)
    source = world / "iglue/datasets/wit/annotations"
    (ann / "val_en.jsonl").write_bytes((source / "val_en.jsonl").read_bytes())
    with zipfile.ZipFile(ann / "train_en.jsonl.zip", "w") as zf:  # as IGLUE ships it
        zf.write(source / "train_en.jsonl", "train_en.jsonl")
    (tmp_path / "images").symlink_to(world / "images")
    config = tiny("wit.yaml", f"data_root={tmp_path}", "synthetic=null")
    WIT.prepare_wit(config, tmp_path)
    out = tmp_path / "data/wit/annotations-bs64"
    assert sorted(p.name for p in out.iterdir()) == ["train_en.jsonl", "val_en.jsonl"]  # no scratch left behind
    assert len(jsonl(out / "train_en.jsonl")) == len(jsonl(source / "train_en.jsonl"))
    (out / "train_en.jsonl").write_text("kept\n")
    WIT.prepare_wit(config, tmp_path)  # an existing file is never redone
    assert (out / "train_en.jsonl").read_text() == "kept\n"


def test_gmt_missing_file_names_the_gmt_key(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="gmt_test_file.*annotations_machine-translate/xx"):
        xFlickrCO.main(["--config", str(ROOT / "configs/tiny/xflickrco.yaml"), "--evaluate", "--gmt", "--output_dir",
                        str(tmp_path), "--opts", *FAST, "test_languages=[en,xx]"])


def test_bf16_rerank_gives_the_float32_ranks_on_the_retrieval_model(world):
    """Under bf16 autocast (16-bit fusion, float32 re-score of the pairs too close to order) the stage-2 ranks are
    the float32 ones."""
    config = tiny("itr_multi30k.yaml")
    config["text_encoder"] = prepare_text_encoder(config, world)
    tokenizer = load_tokenizer(config["text_encoder"])
    torch.manual_seed(0)
    model = create_model("cclm_retrieval", config, root=world).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    texts = [c for entry in json.loads((world / "data/finetune/multi30k/test_2016_flickr.de.json").read_text())[:12]
             for c in entry["caption"]]
    images = torch.randn(9, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    adapter = CCLMView(model)
    img = encode_images(adapter, [images], torch.device("cpu"))
    txt = encode_texts(adapter, texts, tokenizer, 40, 5, torch.device("cpu"))
    exact = rerank_topk(adapter, img, txt, 5, 7)
    stats = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = rerank_topk(adapter, img, txt, 5, 7, stats=stats)
    assert stats["dtype"] == "bfloat16" and stats["max_error"] > 0
    for direction in exact:
        assert torch.equal(mixed[direction][0], exact[direction][0]), direction
