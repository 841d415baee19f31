"""The public API (cclm/api.py): its features and re-ranked orders are the retrieval evaluation's; every released
checkpoint layout loads with no missing or unexpected key; inputs and errors."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import XLMRobertaConfig

import cclm
from dataset.retrieval import ImageRoots, RetrievalEvalDataset, read_eval_data
from dataset.tokenizer import load_tokenizer
from dataset.transforms import build_transform
from models.cclm import CCLMPretrain
from models.factory import create_model
from models.ranking import CCLMView, encode_texts, rerank_topk
from models.weights.finetune import ours_to_task_reference
from models.weights.pretrain import ours_to_reference
from tasks.retrieval import RetrievalEvaluator

TEST_FILE = "data/finetune/multi30k/test_2016_flickr.{lang}.json"


@pytest.fixture(scope="module")
def api(tiny_cclm_checkpoint):
    path, _, _ = tiny_cclm_checkpoint
    return cclm.load(path, device="cpu")


@pytest.fixture(scope="module")
def evaluation(tiny_cclm_checkpoint):
    """The retrieval evaluation's own path on the German test set: its model, images and texts encoded."""
    path, config, root = tiny_cclm_checkpoint
    model = create_model("cclm_retrieval", config, root=root)
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    model.eval()
    data = read_eval_data("caption_json", root / TEST_FILE.format(lang="de"), ImageRoots(root / "images"),
                          config["max_words"])
    ds = RetrievalEvalDataset(data, build_transform("test", config["image_res"]), "de")
    tokenizer = load_tokenizer(config["text_encoder"])
    evaluator = RetrievalEvaluator(config, None, tokenizer, torch.device("cpu"))
    view = CCLMView(model)
    img = evaluator._encode_images(view, ds)
    txt = encode_texts(view, ds.texts, tokenizer, config["max_tokens"], config["batch_size_test_text"],
                       torch.device("cpu"))
    raw = [c for entry in json.loads((root / TEST_FILE.format(lang="de")).read_text(encoding="utf-8"))
           for c in entry["caption"]]
    return {"config": config, "view": view, "img": img, "txt": txt, "images": [r.path for r in data.images],
            "raw_texts": raw, "cleaned": ds.texts}


def test_features_are_the_evaluation_features(api, evaluation):
    config = evaluation["config"]
    assert evaluation["raw_texts"] != evaluation["cleaned"]  # the API gets the raw captions and cleans them itself
    images = api.encode_images(evaluation["images"], batch_size=config["batch_size_test"])
    texts = api.encode_texts(evaluation["raw_texts"], batch_size=config["batch_size_test_text"])
    assert torch.equal(images, evaluation["img"].feats)
    assert torch.equal(texts, evaluation["txt"].feats)
    assert torch.allclose(images.norm(dim=1), torch.ones(len(images)), atol=1e-5)
    sims = api.similarity(texts, images)
    assert torch.allclose(sims, evaluation["txt"].feats @ evaluation["img"].feats.t(), atol=1e-6)


def assert_same_order(indices, scores, expected_indices, expected_scores):
    """The same candidates in the same order, except where two scores tie to float32 rounding."""
    assert indices.shape == expected_indices.shape
    assert torch.allclose(scores, expected_scores, atol=1e-5, rtol=1e-5)
    differ = (indices != expected_indices).nonzero().tolist()
    for row, col in differ:
        neighbours = expected_scores[row, max(0, col - 1):col + 2]
        assert (neighbours - expected_scores[row, col]).abs().sort().values[1] < 1e-5, (row, col)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_reranked_order_is_the_evaluation_stage_two_order(api, evaluation, direction):
    k = 8
    expected = rerank_topk(evaluation["view"], evaluation["img"], evaluation["txt"], k, rerank_batch=64)[direction]
    images = [Path(p) for p in evaluation["images"]]  # Path objects: images (strings would be texts)
    queries, candidates = ((evaluation["raw_texts"], images) if direction == "t2i"
                           else (images, evaluation["raw_texts"]))
    ranking = api.rank(queries, candidates, top_k=k, rerank_k=k)
    assert ranking.direction == direction and ranking.reranked
    assert_same_order(ranking.indices, ranking.scores, *expected)
    stage_one = api.rank(queries, candidates, top_k=k)
    sims = evaluation["txt"].feats @ evaluation["img"].feats.t()
    oriented = sims if direction == "t2i" else sims.t()
    assert torch.equal(stage_one.indices, oriented.topk(k, dim=1).indices)
    assert not stage_one.reranked and torch.allclose(stage_one.scores, oriented.topk(k, dim=1).values)
    assert ranking[0] == list(zip(ranking.indices[0].tolist(), ranking.scores[0].tolist()))


def test_every_image_input_gives_the_same_features(api, evaluation):
    paths = evaluation["images"][:3]
    pil = [Image.open(p).convert("RGB") for p in paths]
    tensors = [api.transform(image) for image in pil]
    by_path = api.encode_images(paths)
    for other in (api.encode_images(pil), api.encode_images(tensors), api.encode_images(torch.stack(tensors)),
                  api.encode_images([Path(p) for p in paths])):
        assert torch.equal(other, by_path)
    # one image alone: another batch size, the same features up to float32 rounding
    assert torch.allclose(api.encode_images(paths[0]), by_path[:1], atol=1e-6)
    assert torch.allclose(api.encode_images(tensors[1]), by_path[1:2], atol=1e-6)
    assert api.encode_images([]).shape == (0, api.embed_dim)


def test_bad_inputs_are_errors_naming_them(api, tmp_path):
    with pytest.raises(ValueError, match=r"image 1: a tensor of shape \(3, 8, 8\); expected \(3, 64, 64\)"):
        api.encode_images([torch.zeros(3, 64, 64), torch.zeros(3, 8, 8)])
    with pytest.raises(ValueError, match=r"text 1 \('\?!'\) has no word left after cleaning"):
        api.encode_texts(["a red circle", "?!"])
    with pytest.raises(TypeError, match="text 0: expected a string"):
        api.encode_texts([3])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(cclm.api.UserError, match="broken.jpg"):
        api.encode_images([bad])
    with pytest.raises(ValueError, match="both texts"):
        api.rank(["a"], ["b"])
    with pytest.raises(ValueError, match="top_k 5 > rerank_k 2"):
        api.rank(["a red circle"], [torch.zeros(3, 64, 64)], top_k=5, rerank_k=2)


def test_bf16_features_are_close_to_fp32(tiny_cclm_checkpoint, api, evaluation):
    low = cclm.load(tiny_cclm_checkpoint[0], device="cpu", precision="bf16")
    assert low.precision == "bf16" and api.precision == "fp32"
    feats = low.encode_images(evaluation["images"][:8])
    assert feats.dtype == torch.float32
    assert (feats * api.encode_images(evaluation["images"][:8])).sum(dim=1).min() > 0.98


def test_a_progress_bar_shows_on_long_inputs(api, capsys):
    api.encode_texts(["a red circle"] * 10, batch_size=2)
    assert "encoding texts" not in capsys.readouterr().err
    api.encode_texts(["a red circle"] * 10, batch_size=2, progress=True)
    assert "encoding texts" in capsys.readouterr().err


def test_identity_fingerprints_the_weights(tiny_cclm_checkpoint, api, tmp_path):
    path, config, _ = tiny_cclm_checkpoint
    again = cclm.load(path, device="cpu")
    assert again.identity == api.identity and len(api.identity["fingerprint"]) == 32
    state = torch.load(path, weights_only=True)
    state["model"]["text_proj.weight"] += 0.01
    torch.save(state, tmp_path / "other.pth")
    assert cclm.load(tmp_path / "other.pth").identity["fingerprint"] != api.identity["fingerprint"]


# ---------------------------------------------------------------------------------------------- loading

def test_a_missing_tokenizer_is_one_line(tiny_cclm_checkpoint, tmp_path):
    with pytest.raises(cclm.CheckpointError, match=r"no tokenizer at text encoder .*nowhere.*pass text_encoder=") as e:
        cclm.load(tiny_cclm_checkpoint[0], text_encoder=tmp_path / "nowhere")
    assert "\n" not in str(e.value)


def test_a_checkpoint_without_the_ranking_heads_is_refused(tiny_cclm_checkpoint, tmp_path):
    path, config, root = tiny_cclm_checkpoint
    model = create_model("cclm_classification", dict(config, num_labels=3), root=root)
    torch.save({"model": model.state_dict(), "config": config}, tmp_path / "xvnli.pth")
    with pytest.raises(cclm.CheckpointError, match=r"lacks \d+ weight\(s\) that embedding and ranking need"):
        cclm.load(tmp_path / "xvnli.pth")
    (tmp_path / "garbage.th").write_bytes(b"\x00" * 100)
    with pytest.raises(cclm.CheckpointError, match="garbage.th"):
        cclm.load(tmp_path / "garbage.th")


TINY_VISION = {"image_res": 64, "window_size": 2, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
               "vision_width": 64}  # every stage at least as large as the window: no clamped (smaller) table


@pytest.mark.parametrize("layout", ["reference_pretrain", "reference_retrieval", "ours_pretrain"])
def test_tiny_checkpoints_of_every_layout_load_without_missing_or_unexpected_keys(tiny_cclm_checkpoint, tmp_path,
                                                                                  layout):
    _, config, root = tiny_cclm_checkpoint
    config = dict(config, vision_config=TINY_VISION)
    torch.manual_seed(1)
    if layout.endswith("pretrain"):
        model = CCLMPretrain(config, root=root)
        state = model.state_dict()
        if layout == "reference_pretrain":
            state = ours_to_reference(state, vision_encoder=model.vision_encoder)
    else:
        model = create_model("cclm_retrieval", config, root=root)
        state = ours_to_task_reference(model.state_dict(), "retrieval", vision_encoder=model.vision_encoder)
    saved = {"model": state} if layout.startswith("reference") else {"model": state, "config": config}
    torch.save(saved, tmp_path / "ckpt.th")
    loaded = cclm.load(tmp_path / "ckpt.th", config=None if "config" in saved else config)
    assert loaded.load_report.missing == [] and loaded.load_report.unexpected == []
    for name, tensor in loaded.model.state_dict().items():
        if name in model.state_dict() and "relative_position" not in name and "attn_mask" not in name:
            assert torch.equal(tensor, model.state_dict()[name]), name


XLMR_IDS = 250002


@pytest.fixture(scope="module")
def xlmr_large_folder(tmp_path_factory):
    """An XLM-R-large config.json (24 layers; the models keep 12) beside a tokenizer of as many ids in XLM-R's
    layout (made-up pieces: the test is about loading, not tokenising)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import XLMRobertaTokenizerFast

    path = tmp_path_factory.mktemp("xlmr-large")
    XLMRobertaConfig(vocab_size=XLMR_IDS, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                     layer_norm_eps=1e-5).save_pretrained(path)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = [(s, 0.0) for s in specials] + [(f"\u2581w{i}", -1.0) for i in range(XLMR_IDS - 5)] + [("<mask>", 0.0)]
    unigram = Tokenizer(models.Unigram(pieces, unk_id=3))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    XLMRobertaTokenizerFast(tokenizer_object=unigram, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                            cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                            mask_token="<mask>").save_pretrained(str(path))
    return path


def manifest_checkpoint(manifest: Path, out: Path) -> Path:
    """A released checkpoint's keys, shapes and dtypes (a key manifest) as a file of meta tensors (no values)."""
    state = {}
    for line in manifest.read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        state[key] = torch.empty(dims, dtype=getattr(torch, dtype), device="meta")
    torch.save({"model": state}, out)
    return out


@pytest.mark.parametrize("released, image_res, model_class", [("pretrain", 224, "CCLMPretrain"),
                                                              ("retrieval", 384, "CCLMRetrieval")])
def test_released_full_size_layouts_load_through_the_one_call(shared_docs, xlmr_large_folder, tmp_path, released,
                                                              image_res, model_class):
    """The released 3M/4M pre-training .th (one layout) and a fine-tuned retrieval checkpoint, full size on the meta
    device: the reference's settings for the kind of file, every weight found, no key unexplained."""
    path = manifest_checkpoint(shared_docs / f"cclm-{released}-keys.tsv", tmp_path / f"cclm_{released}.th")
    loaded = cclm.load(path, text_encoder=xlmr_large_folder, device="meta")
    assert type(loaded.model).__name__ == model_class and loaded.image_res == image_res
    assert loaded.load_report.missing == [] and loaded.load_report.unexpected == []
    assert loaded.embed_dim == 256 and loaded.identity["fingerprint"] is None


def test_the_readme_example_runs(tiny_cclm_checkpoint, tmp_path, monkeypatch, capsys):
    """The README's Python example, in a folder laid out as the demo leaves it (its world, its checkpoint)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use a model from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    path, _, root = tiny_cclm_checkpoint
    arm = tmp_path / "output" / "demo" / "with_parallel_text"
    arm.mkdir(parents=True)
    (arm / "checkpoint_latest.pth").write_bytes(Path(path).read_bytes())
    (tmp_path / "output" / "demo" / "results.json").write_text(json.dumps({"world": {"root": str(root)}}))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["image_features"].shape == (8, namespace["model"].embed_dim)
    assert namespace["ranking"].indices.shape == (8, 3) and namespace["ranking"].reranked
    assert "tensor(" in capsys.readouterr().out
