"""XVNLI.py, GQA.py and NLVR.py: the shared pieces (language files, schedule, selection, exact sharded scoring,
batch capping), the task data built from the real IGLUE samples with their quirks, and a tiny train -> --evaluate ->
--fewshot round per script on the synthetic world."""
import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import GQA
import NLVR
import XVNLI
from tasks.understanding import ClassificationCollate, EvalSet, classification_accuracy, eval_loader, train_loader
from utils.config import load_config
from utils.dist import DistEnv
from tasks.environment import resolve_data_root

ROOT = Path(__file__).resolve().parents[2]
WORLD = {"synthetic": {"images": 200, "seed": 0}}
FAST = ["run.progress=false", "run.log_every=1", "run.num_workers=0", "batch_size_test=64"]


@pytest.fixture(scope="module")
def world():
    """The tiny configs' synthetic world (generated once into cache/, shared with the other task tests)."""
    return resolve_data_root(WORLD)


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def config_for(task_config, schema, *opts):
    return load_config(ROOT / task_config, list(opts), schema=ROOT / schema)


# --------------------------------------------------------------------------------------------- shared pieces

def test_classification_collate_truncates_only_when_asked(tiny_tokenizer):
    long_text = " ".join(["a red circle on the left"] * 10)
    items = [(torch.zeros(3, 4, 4), torch.ones(3, 4, 4), long_text, 1), (torch.zeros(3, 4, 4),
             torch.ones(3, 4, 4), "two green triangles", 0)]
    train = ClassificationCollate(tiny_tokenizer, ("left_image", "right_image"), max_tokens=8)(items)
    full = ClassificationCollate(tiny_tokenizer, ("left_image", "right_image"))(items)
    assert set(train) == {"left_image", "right_image", "text_ids", "text_atts", "targets"}
    assert train["text_ids"].shape == (2, 8) and full["text_ids"].shape[1] > 8
    assert full["right_image"].sum() == 2 * 3 * 16 and train["targets"].tolist() == [1, 0]
    assert full["text_ids"][0, 0] == 0 and full["text_ids"][1, -1] == 1  # <s> first; the short text is padded


class Numbers(Dataset):
    """Item i: a 'feature' i and the label i % 3."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 3


def collate_numbers(batch):
    x, y = zip(*batch)
    return {"x": torch.stack(x), "targets": torch.tensor(y)}


class PredictsZeroBelowFour(torch.nn.Module):
    def logits(self, x):
        # class 0 for x < 4, else class 1
        return torch.cat([(x < 4).float(), (x >= 4).float(), torch.zeros_like(x)], dim=1)


def test_classification_accuracy_counts_each_example_once():
    config = {"seed": 0, "run": {"num_workers": 0}}
    loader = eval_loader(EvalSet(Numbers(7), collate_numbers, "numbers"), 2, config, DistEnv())
    # labels 0 1 2 0 1 2 0 -> predictions 0 0 0 0 1 1 1: right at 0, 3, 4 -> 3 of 7
    assert classification_accuracy(PredictsZeroBelowFour(), loader, torch.device("cpu")) == pytest.approx(300 / 7)


def test_training_batch_is_capped_to_a_process_share():
    config = {"seed": 0, "run": {"num_workers": 0}}
    loader = train_loader(Numbers(80), collate_numbers, 16, config, DistEnv(rank=3, world_size=8))
    assert loader.batch_size == 10 and len(loader) == 1  # MaRVL few-shot: 80 pairs over 8 processes
    assert len(train_loader(Numbers(80), collate_numbers, 16, config, DistEnv())) == 5


# --------------------------------------------------------------------------------------------- the IGLUE samples

@pytest.fixture
def sample_root(iglue_sample, tmp_path):
    """A data root whose iglue/datasets is the sample (images are absent: nothing here loads one)."""
    (tmp_path / "iglue").mkdir()
    os.symlink(iglue_sample / "datasets", tmp_path / "iglue" / "datasets")
    return tmp_path


def gold_label_dashes(path):
    return sum(1 for record in jsonl(path) if record["gold_label"] == "-")


def test_xvnli_sample_every_line_read_and_dashes_dropped(sample_root, tiny_tokenizer):
    ann = sample_root / "iglue/datasets/XVNLI/annotations"
    config = config_for("configs/xvnli/xvnli.yaml", "configs/base/xvnli.yaml", "test_languages=null",
                        "val_file=iglue/datasets/XVNLI/annotations/en/test.jsonl", "evaluate=true")
    data = XVNLI.build_data(config, sample_root, tiny_tokenizer, DistEnv())
    assert list(data.tests) == ["en", "ar", "fr"]
    for lang, evalset in data.tests.items():
        path = ann / lang / "test.jsonl"
        assert len(evalset.dataset) + gold_label_dashes(path) == len(jsonl(path)) == 30
        assert data.facts["dropped_without_gold_label"][f"test_{lang}"] == gold_label_dashes(path)
    assert sum(data.facts["dropped_without_gold_label"].values()) > 0  # the sample has '-' labels
    assert data.train is None and data.protocol == "zero-shot"

    config = config_for("configs/xvnli/xvnli.yaml", "configs/base/xvnli.yaml", "test_languages=null",
                        "test_file=iglue/datasets/XVNLI/annotations_machine-translate/{lang}/test.jsonl",
                        "val_file=iglue/datasets/XVNLI/annotations/en/test.jsonl", "evaluate=true")
    translate_test = XVNLI.build_data(config, sample_root, tiny_tokenizer, DistEnv())
    assert list(translate_test.tests) == ["ar", "fr"]
    assert all(len(s.dataset) > 0 for s in translate_test.tests.values())


@pytest.mark.parametrize("spec", ["ar,48", "ar,1", "fr,48", "fr,1", "en,48", "en,1"])
def test_xvnli_sample_fewshot_files(sample_root, tiny_tokenizer, spec):
    lang, shots = spec.split(",")
    config = config_for("configs/xvnli/xvnli_fewshot.yaml", "configs/base/xvnli.yaml", f"fewshot={spec}")
    few = XVNLI.build_data(config, sample_root, tiny_tokenizer, DistEnv())
    assert list(few.tests) == [lang] and few.selection == lang
    train = sample_root / f"iglue/datasets/XVNLI/annotations/{lang}/train_{shots}.jsonl"
    assert len(few.train) == len(jsonl(train)) - gold_label_dashes(train)
    assert few.facts["dropped_without_gold_label"]["train"] == gold_label_dashes(train)


def test_gqa_sample_dict_and_list_files_and_the_full_answer_list(sample_root, tiny_tokenizer):
    ann = sample_root / "iglue/datasets"
    few_shot = "iglue/datasets/xGQA/annotations/few_shot"
    config = config_for("configs/gqa/gqa.yaml", "configs/base/gqa.yaml", "test_languages=null",
                        f"test_file={few_shot}/{{lang}}/dev.json",
                        "valid_file=[iglue/datasets/gqa/annotations/testdev.json]",
                        f"train_file=[{few_shot}/en/train_48.json,{few_shot}/de/train_48.json,"
                        "iglue/datasets/gqa/annotations/testdev_balanced_questions.json]")
    data = GQA.build_data(config, sample_root, tiny_tokenizer, DistEnv())
    assert len(data.train) == sum(len(read_json(ann / f)) for f in (
        "xGQA/annotations/few_shot/en/train_48.json", "xGQA/annotations/few_shot/de/train_48.json",
        "gqa/annotations/testdev_balanced_questions.json"))
    assert list(data.tests) == ["en", "de", "zh"]
    for lang, evalset in data.tests.items():
        raw = read_json(ann / f"xGQA/annotations/few_shot/{lang}/dev.json")  # dict keyed by question id
        assert set(evalset.dataset.references) == set(raw)
        assert evalset.dataset.references == {qid: q.get("answer") or None for qid, q in raw.items()}
    listed = read_json(ann / "gqa/annotations/testdev.json")  # list form: the first label key is the answer
    assert data.selection.dataset.references == {
        str(q["question_id"]): (next(iter(q["label"])) if q["label"] else None) for q in listed}
    assert data.facts["answers"] == len(read_json(ann / "gqa/annotations/trainval_ans2label.json")) == 1842
    assert data.score.answer_ids.shape[0] == 1842 and (data.score.answer_ids[:, 0] == 0).all()

    config = config_for("configs/gqa/gqa_fewshot.yaml", "configs/base/gqa.yaml", "fewshot=de")
    with pytest.raises(FileNotFoundError, match="few_shot/de/test.json"):  # the sample has no xGQA test files
        GQA.build_data(config, sample_root, tiny_tokenizer, DistEnv())


def test_marvl_and_nlvr2_samples_converted_and_read(sample_root, tiny_tokenizer):
    datasets = sample_root / "iglue/datasets"
    config = config_for("configs/nlvr/nlvr.yaml", "configs/base/nlvr.yaml", "test_languages=null",
                        "en_test_file=iglue/datasets/nlvr2/annotations/test.jsonl",
                        "val_file=[iglue/datasets/nlvr2/annotations/dev.jsonl]",
                        "train_file=[iglue/datasets/nlvr2/annotations/dev.jsonl]")
    data = NLVR.build_data(config, sample_root, tiny_tokenizer, DistEnv())
    assert (sample_root / "data/marvl/marvl-id_train10x2.json").is_file()  # converted by our code
    assert list(data.tests) == ["en", "id", "tr", "zh"]  # NLVR2 test as en; the _gmt and 10x2 files are not tests
    for lang in ("id", "tr", "zh"):
        raw = jsonl(datasets / f"marvl/zero_shot/annotations/marvl-{lang}.jsonl")
        examples = data.tests[lang].dataset.examples
        assert [e.label for e in examples] == [int(r["label"]) for r in raw]  # JSON booleans
        first = raw[0]
        assert examples[0].left.endswith(f"marvl-images/{first['language']}/images/{first['concept']}/"
                                         f"{first['left_img']}")
    nlvr2 = jsonl(datasets / "nlvr2/annotations/test.jsonl")
    assert [e.label for e in data.tests["en"].dataset.examples] == [int(r["label"] == "True") for r in nlvr2]
    assert len(data.train) == len(jsonl(datasets / "nlvr2/annotations/dev.jsonl"))

    config = config_for("configs/nlvr/nlvr.yaml", "configs/base/nlvr.yaml", "test_languages=null",
                        "test_file=data/marvl/marvl-{lang}_gmt.json", "en_test_file=null", "evaluate=true",
                        "val_file=[iglue/datasets/nlvr2/annotations/dev.jsonl]")
    translate_test = NLVR.build_data(config, sample_root, tiny_tokenizer, DistEnv())
    for lang, evalset in translate_test.tests.items():
        assert len(evalset.dataset) == len(jsonl(datasets / f"marvl/zero_shot/annotations_machine-translate/"
                                                            f"marvl-{lang}_gmt.jsonl"))
    assert list(translate_test.tests) == ["id", "tr", "zh"]

    for lang in ("id", "tr", "zh"):
        config = config_for("configs/nlvr/nlvr_fewshot.yaml", "configs/base/nlvr.yaml", f"fewshot={lang}")
        few = NLVR.build_data(config, sample_root, tiny_tokenizer, DistEnv())
        raw = jsonl(datasets / f"marvl/few_shot/annotations/marvl-{lang}_train10x2.jsonl")
        assert len(few.train) == len(raw) and list(few.tests) == [lang]
        assert [e.label for e in few.train.examples] == [int(r["label"]) for r in raw]
        assert few.train.examples[0].left.endswith(f"marvl_fewshot/{lang}/all/{Path(raw[0]['left_img']).name}")


# --------------------------------------------------------------------------------------------- end to end

def run_round(module, tiny_config, out, fewshot, languages, train_file=None, opts=(), steps=2):
    """Train (zero-shot) -> --evaluate the best checkpoint -> --fewshot from it; returns the three payloads."""
    common = ["--config", str(ROOT / tiny_config)]
    fast = [*FAST, *opts]
    full_train = [f"train_file=[{train_file}]"] if train_file else []
    trained = module.main([*common, "--output_dir", str(out / "train"), "--opts", *fast, *full_train,
                           f"run.max_steps={steps}", f"test_languages=[{','.join(languages)}]"])
    best = str(out / "train" / "checkpoint_best.pth")
    evaluated = module.main([*common, "--output_dir", str(out / "eval"), "--evaluate", "--checkpoint", best,
                             "--opts", *fast, f"test_languages=[{','.join(languages)}]"])
    few = module.main([*common, "--output_dir", str(out / "few"), "--fewshot", fewshot, "--checkpoint", best,
                       "--opts", *fast, f"run.max_steps={steps}"])
    return trained, evaluated, few


def check_round(out, trained, evaluated, few, languages, few_language):
    on_disk = read_json(out / "train" / "results.json")
    assert list(on_disk["languages"]) == languages
    others = [on_disk["languages"][lang]["acc"] for lang in languages if lang != "en"]
    assert on_disk["iglue_avg"]["acc"] == pytest.approx(sum(others) / len(others))
    assert "IGLUE avg" in (out / "train" / "results.md").read_text()
    assert on_disk["extra"]["best_epoch"] == 0 and on_disk["extra"]["protocol"] == "zero-shot"
    # the best checkpoint, evaluated on its own, gives exactly the reported rows and dev accuracy
    assert evaluated["languages"] == trained["languages"]
    assert evaluated["extra"]["val_acc"] == trained["extra"]["val_acc"]
    assert list(few["languages"]) == [few_language]
    assert few["extra"]["protocol"].startswith(f"few-shot {few_language}")
    assert few["extra"]["val_acc"] == few["languages"][few_language]["acc"]  # selected on the target test set
    for payload in (trained, evaluated, few):
        for metrics in payload["languages"].values():
            assert 0.0 <= metrics["acc"] <= 100.0


def test_xvnli_train_evaluate_fewshot(world, tmp_path):
    trained, evaluated, few = run_round(XVNLI, "configs/tiny/xvnli.yaml", tmp_path, "de,48", ["en", "de"],
                                        train_file="iglue/datasets/XVNLI/annotations/en/train.jsonl")
    check_round(tmp_path, trained, evaluated, few, ["en", "de"], "de")
    ann = world / "iglue/datasets/XVNLI/annotations"
    assert trained["extra"]["dropped_without_gold_label"] == {
        "test_en": gold_label_dashes(ann / "en/test.jsonl"), "test_de": gold_label_dashes(ann / "de/test.jsonl"),
        "val": gold_label_dashes(ann / "en/dev.jsonl"), "train": gold_label_dashes(ann / "en/train.jsonl")}
    assert few["extra"]["dropped_without_gold_label"]["train"] == gold_label_dashes(ann / "de/train_48.jsonl")


def test_xvnli_gmt_evaluates_the_machine_translated_test_files(world, tmp_path, random_checkpoint):
    """--gmt (translate-test): every test language but English, read from annotations_machine-translate."""
    checkpoint = random_checkpoint(ROOT / "configs/tiny/xvnli.yaml", ROOT / "configs/base/xvnli.yaml",
                                   "cclm_classification")
    out = XVNLI.main(["--config", str(ROOT / "configs/tiny/xvnli.yaml"), "--evaluate", "--gmt", "--checkpoint",
                      checkpoint, "--output_dir", str(tmp_path), "--opts", *FAST, "test_languages=[en,de]"])
    assert list(out["languages"]) == ["de"] and out["extra"]["translate_test"] is True
    expected = world / "iglue/datasets/XVNLI/annotations_machine-translate/de/test.jsonl"
    assert Path(out["extra"]["test_files"]["de"]) == expected


def test_gqa_train_evaluate_fewshot(world, tmp_path):
    trained, evaluated, few = run_round(GQA, "configs/tiny/gqa.yaml", tmp_path, "de", ["ja"],
                                        train_file="iglue/datasets/gqa/annotations/train.json",  # list form
                                        opts=["k_test=3"])
    check_round(tmp_path, trained, evaluated, few, ["ja"], "de")
    test = read_json(world / "iglue/datasets/xGQA/annotations/few_shot/ja/test.json")
    assert trained["extra"]["scored_questions"]["ja"] == sum(1 for q in test.values() if q.get("answer"))
    # exact match over whole questions: a multiple of 100 / number of scored questions
    scored = trained["extra"]["scored_questions"]["ja"]
    assert (trained["languages"]["ja"]["acc"] * scored / 100) == pytest.approx(
        round(trained["languages"]["ja"]["acc"] * scored / 100))
    # prediction files: every question of the file, and the reported accuracy recomputed from them
    best = read_json(tmp_path / "train/predictions/best/test_ja.json")
    assert sorted(str(p["question_id"]) for p in best) == sorted(test)
    answers = {qid: q["answer"] for qid, q in test.items() if q.get("answer")}
    hits = sum(p["answer"] == answers[str(p["question_id"])] for p in best if str(p["question_id"]) in answers)
    assert 100.0 * hits / scored == pytest.approx(trained["languages"]["ja"]["acc"])
    assert read_json(tmp_path / "eval/predictions/evaluate/test_ja.json") == best  # the best checkpoint, re-evaluated


def test_nlvr_train_evaluate_fewshot(world, tmp_path):
    trained, evaluated, few = run_round(NLVR, "configs/tiny/nlvr.yaml", tmp_path, "de", ["zh"])
    check_round(tmp_path, trained, evaluated, few, ["en", "zh"], "de")  # en = the NLVR2 test set
    assert trained["extra"]["test_files"]["en"].endswith("data/finetune/nlvr_en/nlvr_test.json")
    assert few["extra"]["test_files"]["de"].endswith("data/marvl/marvl-de.json")


@pytest.mark.parametrize("path,schema,batch_key,batch,lr,epochs,start_eval,interval", [
    ("configs/xvnli/xvnli.yaml", "configs/base/xvnli.yaml", "batch_size", 12, 3e-5, 10, 0, 1),
    ("configs/xvnli/xvnli_fewshot.yaml", "configs/base/xvnli.yaml", "batch_size", 12, 1e-5, 60, 9, 10),
    ("configs/gqa/gqa.yaml", "configs/base/gqa.yaml", "batch_size_train", 32, 3e-5, 5, 2, 1),
    ("configs/gqa/gqa_fewshot.yaml", "configs/base/gqa.yaml", "batch_size_train", 32, 1e-5, 60, 9, 10),
    ("configs/nlvr/nlvr.yaml", "configs/base/nlvr.yaml", "batch_size", 10, 3e-5, 10, 6, 1),
    ("configs/nlvr/nlvr_fewshot.yaml", "configs/base/nlvr.yaml", "batch_size", 10, 1e-5, 60, 9, 10),
])
def test_real_configs_carry_the_reference_hyper_parameters(path, schema, batch_key, batch, lr, epochs, start_eval,
                                                           interval):
    config = config_for(path, schema)
    assert config[batch_key] == batch and config["image_res"] == 384
    assert config["optimizer"]["lr"] == lr and config["schedular"]["epochs"] == epochs
    assert config["schedular"]["num_warmup_steps"] == 0.1 and config["optimizer"]["lr_mult"] == 1  # spec B3
    assert (config["start_eval"], config["eval_interval"]) == (start_eval, interval)


def test_xvnli_gmt_missing_file_names_the_gmt_key(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="config key 'gmt_test_file': .*annotations_machine-translate/xx"):
        XVNLI.main(["--config", str(ROOT / "configs/tiny/xvnli.yaml"), "--evaluate", "--gmt", "--output_dir",
                    str(tmp_path), "--opts", *FAST, "test_languages=[en,xx]"])
