"""Per-task writers of the synthetic world: each turns scenes into one dataset's files, in its real layout.

Scenes arrive one at a time, split by split (train, val, test = held out). A builder writes the records of a scene
to every file that needs them (its split's files, the few-shot files, the machine-translated copies), places the
images its files refer to, and hands the training text to the tokenizer corpus. ``ids`` fixes every external id of a
scene (Flickr30K id, COCO id, GQA image id, WIT url) from its global number, so all datasets agree.
"""
from __future__ import annotations

import base64
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from dataset.synthetic.facts import (GQA_ANSWERS, Question, caption, caption_templates, pair_statement,
                                     scene_hypotheses, scene_questions, semantic_str)
from dataset.synthetic.writers import (Corpus, ImagePlacer, JsonDictWriter, JsonListWriter, JsonlWriter,
                                       PhpJsonlWriter, ShardedJsonl, ShardedTar)
from dataset.synthetic.language import SHAPES, Grammar, Phrase, grammar
from dataset.synthetic.scenes import Scene, encode_jpeg, encode_png, scene_rng

SPLITS = ("train", "val", "test")
IGLUE = "iglue/datasets"


@dataclass
class Context:
    """What every builder shares: output root, seed, languages, split sizes, image placer, corpus."""

    root: Path
    seed: int
    languages: tuple[str, ...]
    counts: dict[str, int]
    shards: int
    pretrain_languages: tuple[str, ...]
    placer: ImagePlacer
    corpus: Corpus

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(lang for lang in self.languages if lang != "en")

    def grammar(self, lang: str) -> Grammar:
        return grammar(lang)

    def number(self, scene: Scene) -> int:
        """The scene's global number: train scenes first, then val, then test."""
        offset = {"train": 0, "val": self.counts["train"], "test": self.counts["train"] + self.counts["val"]}
        return offset[scene.split] + scene.index

    def rng(self, purpose: str, scene: Scene) -> random.Random:
        return scene_rng(self.seed, f"{purpose}:{scene.split}", scene.index)

    def train_text(self, scene: Scene, *texts: str) -> None:
        """Training text goes to the tokenizer corpus; val and held-out text never does."""
        if scene.split == "train":
            for text in texts:
                self.corpus.add(text)


class SceneImage:
    """A rendered scene with its encodings computed on first use."""

    def __init__(self, image):
        self.image = image
        self._jpeg = self._png = self._b64 = None

    @property
    def jpeg(self) -> bytes:
        if self._jpeg is None:
            self._jpeg = encode_jpeg(self.image)
        return self._jpeg

    @property
    def png(self) -> bytes:
        if self._png is None:
            self._png = encode_png(self.image)
        return self._png

    @property
    def b64(self) -> str:
        if self._b64 is None:
            self._b64 = base64.b64encode(self.jpeg).decode("ascii")
        return self._b64


def flickr_id(number: int) -> str:
    return str(1000000000 + number)


def coco_id(number: int) -> int:
    return 100000 + number


def coco_file(number: int, split: str) -> str:
    folder = "train2014" if split == "train" else "val2014"
    return f"COCO_{folder}_{coco_id(number):012d}.jpg"


def gqa_image_id(number: int) -> str:
    return f"n{100000 + number}"


def wit_url(number: int) -> str:
    return f"https://upload.wikimedia.org/wikipedia/commons/s/sy/Synthetic_scene_{number}.jpg"


class Builder:
    """Base: lazily opened writers (closed at the end of each split) and the list of files written."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.open: dict[str, object] = {}
        self.files: list[str] = []

    def writer(self, rel: str, factory=JsonlWriter, **kwargs):
        if rel not in self.open:
            self.open[rel] = factory(self.ctx.root, rel, **kwargs)
            self.files.append(rel)
        return self.open[rel]

    def add(self, scene: Scene, image: SceneImage) -> None:
        raise NotImplementedError

    def end_split(self, split: str) -> None:
        for w in self.open.values():
            w.close()
        self.open = {}

    def close(self) -> None:
        self.end_split("")


class SceneImagesBuilder(Builder):
    """Scene metadata (scenes/<split>.jsonl) and the images shared by several tasks (Flickr30K, COCO, GQA)."""

    def add(self, scene, image):
        n = self.ctx.number(scene)
        meta = scene.metadata()
        meta.update({"number": n, "flickr_id": flickr_id(n), "coco_file": coco_file(n, scene.split),
                     "gqa_image_id": gqa_image_id(n), "wit_url": wit_url(n)})
        self.writer(f"scenes/{scene.split}.jsonl").write(meta)
        placer = self.ctx.placer
        placer.put((n, "jpg"), f"images/flickr30k-images/{flickr_id(n)}.jpg", image.jpeg)
        folder = "train2014" if scene.split == "train" else "val2014"
        placer.put((n, "jpg"), f"images/coco/{folder}/{coco_file(n, scene.split)}", image.jpeg)
        placer.put((n, "jpg"), f"images/gqa/{gqa_image_id(n)}.jpg", image.jpeg)


class PretrainBuilder(Builder):
    """Pre-training shards (docs/data-formats.md#pre-training-records): image + multilingual captions, and regions
    with boxes."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.image_text = ShardedJsonl(ctx.root, "pretrain/image_text", ctx.shards)
        self.regions = ShardedJsonl(ctx.root, "pretrain/regions", ctx.shards)
        # the same samples as webdataset tar shards: the JPEG as <key>.jpg, the other fields as <key>.json
        self.image_text_tar = ShardedTar(ctx.root, "pretrain/image_text_tar", ctx.shards)
        self.regions_tar = ShardedTar(ctx.root, "pretrain/regions_tar", ctx.shards)

    def add(self, scene, image):
        if scene.split != "train":
            return
        rng = self.ctx.rng("pretrain", scene)
        langs = self.ctx.pretrain_languages
        dicts = [{lang: caption(scene, grammar(lang), t) for lang in langs} for t in caption_templates(rng, 2)]
        captions = dicts if scene.index % 2 else dicts[0]  # the format allows a dict or a list of dicts
        for d in dicts if scene.index % 2 else dicts[:1]:
            self.ctx.train_text(scene, *d.values())
        self.image_text.write({"binary": image.b64, "caption": captions})
        self.image_text_tar.write({"jpg": image.jpeg, "json": {"caption": captions}})
        record = {}
        if scene.index % 2 == 0:  # the whole-image caption is optional in region records
            record["caption"] = dicts[0]
        record["elems"] = self.elements(scene)
        self.regions.write({"binary": image.b64, **record})
        self.regions_tar.write({"jpg": image.jpeg, "json": record})

    def elements(self, scene: Scene) -> list[dict]:
        """One element per group (its union box, "two small red circles on the left"), one per object of a group
        of several ("a small red circle")."""
        langs = self.ctx.pretrain_languages
        elems = []
        for group, boxes in zip(scene.groups, scene.boxes):
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
            texts = {lang: grammar(lang).located_phrase(group.phrase(), group.position) for lang in langs}
            elems.append({"bb": [x0, y0, x1 - x0, y1 - y0], "caption": texts})
            self.ctx.train_text(scene, *texts.values())
            if group.count > 1:
                single = Phrase(1, group.shape, group.colour, group.size)
                texts = {lang: grammar(lang).noun_phrase(single) for lang in langs}
                self.ctx.train_text(scene, *texts.values())
                elems.extend({"bb": list(box), "caption": texts} for box in boxes)
        return elems

    def end_split(self, split):
        pass

    def close(self):
        for shards in (self.image_text, self.regions, self.image_text_tar, self.regions_tar):
            shards.close()
        self.files = self.image_text.rels + self.regions.rels + self.image_text_tar.rels + self.regions_tar.rels


class RetrievalBuilder(Builder):
    """Multi30K (data/finetune/multi30k) and COCO (data/finetune/mscoco) retrieval json, every language."""

    MULTI30K = {"train": "train.{}.json", "val": "val.{}.json", "test": "test_2016_flickr.{}.json"}

    @staticmethod
    def coco_name(lang: str, split: str) -> str:
        names = {"train": "train", "val": "val", "test": "test"} if lang == "zh" else \
            {"train": "train", "val": "valid", "test": "1k_test"}
        return f"{lang}.{names[split]}.json"

    def add(self, scene, image):
        n = self.ctx.number(scene)
        rng = self.ctx.rng("retrieval", scene)
        template, coco_templates = rng.randrange(5), caption_templates(rng, 2)
        flickr_path = f"flickr30k-images/{flickr_id(n)}.jpg"
        folder = "train2014" if scene.split == "train" else "val2014"
        coco_path = f"coco/{folder}/{coco_file(n, scene.split)}"
        for lang in self.ctx.languages:
            g = grammar(lang)
            m30k = self.writer(f"data/finetune/multi30k/{self.MULTI30K[scene.split].format(lang)}",
                               JsonListWriter, ensure_ascii=False)
            coco = self.writer(f"data/finetune/mscoco/{self.coco_name(lang, scene.split)}",
                               JsonListWriter, ensure_ascii=False)
            text = caption(scene, g, template)
            coco_texts = [caption(scene, g, t) for t in coco_templates]
            if scene.split == "train":
                m30k.write({"caption": text, "image": flickr_path, "image_id": n})
                for t in coco_texts:
                    coco.write({"caption": t, "image": coco_path, "image_id": n})
                self.ctx.train_text(scene, text, *coco_texts)
            else:
                m30k.write({"image": flickr_path, "caption": [text], "image_id": n})
                coco.write({"image": coco_path, "caption": coco_texts, "image_id": n})


class FlickrBuilder(Builder):
    """Flickr30K annotations (5 English captions) and xFlickr&CO (test: Flickr30K half then COCO half)."""

    FEW_SHOT = (1, 5, 10, 25, 50, 100)

    def add(self, scene, image):
        n = self.ctx.number(scene)
        rng = self.ctx.rng("flickr", scene)
        templates = caption_templates(rng, 5)
        english = [caption(scene, grammar("en"), t) for t in templates]
        record = {"sentences": english, "id": flickr_id(n), "img_path": f"{flickr_id(n)}.jpg"}
        if scene.split == "train":
            self.writer(f"{IGLUE}/flickr30k/annotations/train_ann.jsonl").write(record)
            self.ctx.train_text(scene, *english)
            self.few_shot(scene, templates[0])
        elif scene.split == "val":
            self.writer(f"{IGLUE}/flickr30k/annotations/valid_ann.jsonl").write(record)
        else:
            self.test(scene, image, record, templates[0])

    def few_shot(self, scene, template):
        n = self.ctx.number(scene)
        for lang in self.ctx.others:
            text = caption(scene, grammar(lang), template)
            for shots in self.FEW_SHOT:
                if scene.index < shots:
                    rel = f"{IGLUE}/xFlickrCO/annotations/{lang}/train_{shots}.jsonl"
                    self.writer(rel).write({"sentences": [text], "id": flickr_id(n), "img_path": f"{flickr_id(n)}.jpg"})
            self.ctx.train_text(scene, text)

    def test(self, scene, image, record, template):
        n = self.ctx.number(scene)
        from_coco = scene.index >= math.ceil(self.ctx.counts["test"] / 2)
        if from_coco:
            name = f"COCO_val2014_{coco_id(n):012d}.jpg"
            self.ctx.placer.put((n, "jpg"), f"images/val2014/{name}", image.jpeg)
            ident = coco_id(n)
        else:
            self.writer(f"{IGLUE}/flickr30k/annotations/test_ann.jsonl").write(record)
            name, ident = record["img_path"], record["id"]
        for lang in self.ctx.languages:
            text = caption(scene, grammar(lang), template)
            self.writer(f"{IGLUE}/xFlickrCO/annotations/{lang}/test.jsonl").write(
                {"sentences": [text], "id": ident, "img_path": name})
            if lang != "en":
                self.writer(f"{IGLUE}/xFlickrCO/annotations_machine-translate/{lang}/test_gmt.jsonl").write(
                    {"sentences": [caption(scene, grammar("en"), template)], "id": ident, "img_path": name})


class XVNLIBuilder(Builder):
    """XVNLI: image premise (Flickr30K id) + hypothesis, labels from the scene, a few "-" labels."""

    FEW_SHOT = (1, 5, 10, 20, 25, 48)
    NO_CONSENSUS = 0.03

    def add(self, scene, image):
        n = self.ctx.number(scene)
        rng = self.ctx.rng("xvnli", scene)
        template = rng.randrange(5)
        caption_id = f"{flickr_id(n)}.jpg#{rng.randrange(5)}"
        pairs = scene_hypotheses(rng, scene)
        rng.shuffle(pairs)
        for label, hypothesis in pairs:
            gold = "-" if rng.random() < self.NO_CONSENSUS else label
            for lang in self.ctx.languages:
                g = grammar(lang)
                record = {"gold_label": gold, "sentence1": caption(scene, g, template),
                          "sentence2": hypothesis.render(g), "captionID": caption_id,
                          "pairID": f"{caption_id}r1{label[0]}", "Flikr30kID": flickr_id(n)}
                self.route(scene, lang, record, hypothesis, template)

    def route(self, scene, lang, record, hypothesis, template):
        base = f"{IGLUE}/XVNLI/annotations"
        if scene.split == "train":
            if lang == "en":
                self.writer(f"{base}/en/train.jsonl").write(record)
            for shots in self.FEW_SHOT:
                if scene.index < shots:
                    self.writer(f"{base}/{lang}/train_{shots}.jsonl").write(record)
            self.ctx.train_text(scene, record["sentence1"], record["sentence2"])
        elif scene.split == "val":
            if lang == "en":
                self.writer(f"{base}/en/dev.jsonl").write(record)
        else:
            self.writer(f"{base}/{lang}/test.jsonl").write(record)
            if lang != "en":
                english = grammar("en")
                translated = dict(record, sentence1=caption(scene, english, template),
                                  sentence2=hypothesis.render(english))
                self.writer(f"{IGLUE}/XVNLI/annotations_machine-translate/{lang}/test.jsonl").write(translated)


class GQABuilder(Builder):
    """GQA (English, list format; testdev also raw dict) and xGQA (raw dict per language) + answer vocabulary."""

    FEW_SHOT = 48

    def add(self, scene, image):
        n = self.ctx.number(scene)
        rng = self.ctx.rng("gqa", scene)
        for k, question in enumerate(scene_questions(rng, scene)):
            qid = str(200000000 + n * 10 + k)
            english = question.render(grammar("en"))
            listed = {"img_id": gqa_image_id(n), "label": {question.answer: 1.0}, "question_id": qid,
                      "sent": english}
            raw = {lang: self.raw(question, qid, gqa_image_id(n), question.render(grammar(lang)), k)
                   for lang in self.ctx.languages}
            self.route(scene, qid, listed, raw)

    @staticmethod
    def raw(question: Question, qid: str, image_id: str, text: str, object_id: int) -> dict:
        """A question in the raw GQA dict format (the field order of the real files)."""
        semantic = question.semantic(object_id)
        return {"semantic": semantic, "entailed": [], "equivalent": [qid], "question": text, "imageId": image_id,
                "isBalanced": True,
                "groups": {"global": question.answer if question.kind in ("colour", "shape") else None,
                           "local": f"{question.kind}-{question.shape or question.position}"},
                "answer": question.answer, "semanticStr": semantic_str(semantic),
                "annotations": {"answer": {}, "question": {}, "fullAnswer": {}}, "types": question.types(),
                "fullAnswer": question.full_answer()}

    def route(self, scene, qid, listed, raw):
        gqa, xgqa = f"{IGLUE}/gqa/annotations", f"{IGLUE}/xGQA/annotations"
        if scene.split == "train":
            self.writer(f"{gqa}/train.json", JsonListWriter).write(listed)
            self.ctx.train_text(scene, listed["sent"])
            if scene.index < self.FEW_SHOT:
                for lang, record in raw.items():
                    self.writer(f"{xgqa}/few_shot/{lang}/train_48.json", JsonDictWriter).write(qid, record)
                    self.ctx.train_text(scene, record["question"])
        elif scene.split == "val":
            self.writer(f"{gqa}/valid.json", JsonListWriter).write(listed)
            for lang, record in raw.items():
                self.writer(f"{xgqa}/few_shot/{lang}/dev.json", JsonDictWriter).write(qid, record)
        else:
            self.writer(f"{gqa}/testdev.json", JsonListWriter, indent=4).write(listed)
            self.writer(f"{gqa}/testdev_balanced_questions.json", JsonDictWriter).write(qid, raw["en"])
            for lang, record in raw.items():
                self.writer(f"{xgqa}/few_shot/{lang}/test.json", JsonDictWriter).write(qid, record)
                if lang != "en":
                    self.writer(f"{xgqa}/zero_shot/testdev_balanced_questions_{lang}.json",
                                JsonDictWriter).write(qid, record)

    def close(self):
        super().close()
        folder = self.ctx.root / IGLUE / "gqa/annotations"
        folder.mkdir(parents=True, exist_ok=True)
        ans2label = {answer: k for k, answer in enumerate(GQA_ANSWERS)}
        (folder / "trainval_ans2label.json").write_text(json.dumps(ans2label, indent=4), encoding="utf-8")
        (folder / "trainval_label2ans.json").write_text(json.dumps(list(GQA_ANSWERS)), encoding="utf-8")
        self.files += [f"{IGLUE}/gqa/annotations/trainval_ans2label.json",
                       f"{IGLUE}/gqa/annotations/trainval_label2ans.json"]


class NLVRBuilder(Builder):
    """Two-image statements: NLVR2 (raw jsonl + X-VLM json, English) and MaRVL (zero-shot and few-shot)."""

    NLVR_SPLIT = {"train": "train", "val": "dev", "test": "test1"}
    RAW_FILE = {"train": "train", "val": "dev", "test": "test"}
    MARVL_FEW_SHOT = (("1", 4), ("2", 8), ("4", 16), ("10", 40), ("10x2", 80))  # file suffix, statements

    def __init__(self, ctx):
        super().__init__(ctx)
        self.pending = None
        self.marvl_ids: dict[tuple[str, str], int] = {}

    def add(self, scene, image):
        if self.pending is None:
            self.pending = (scene, image)
            return
        (left, left_image), (right, right_image) = self.pending, (scene, image)
        self.pending = None
        rng = self.ctx.rng("nlvr", scene)
        wants = [True, False]
        rng.shuffle(wants)
        statements = [(pair_statement(rng, left, right, want), want) for want in wants]
        pair = scene.index // 2
        self.nlvr(left, right, left_image, right_image, pair, statements)
        if scene.split == "test":
            self.marvl_zero_shot(left, right, left_image, right_image, statements)
        elif scene.split == "train" and 2 * pair < self.MARVL_FEW_SHOT[-1][1]:
            self.marvl_few_shot(left, right, left_image, right_image, pair, statements)

    def nlvr(self, left, right, left_image, right_image, pair, statements):
        split = left.split
        name = self.NLVR_SPLIT[split]
        folder = f"train/{pair % 100}" if split == "train" else name
        paths = []
        for side, (scene, image) in enumerate(((left, left_image), (right, right_image))):
            n = self.ctx.number(scene)
            rel = f"{folder}/{name}-{pair}-0-img{side}.png"
            self.ctx.placer.put((n, "png"), f"images/nlvr2/{rel}", image.png)
            paths.append(rel)
        for k, (statement, truth) in enumerate(statements):
            text, label = statement.render(grammar("en")), str(truth)
            self.writer(f"{IGLUE}/nlvr2/annotations/{self.RAW_FILE[split]}.jsonl").write({
                "validation": {"1": label}, "sentence": text,
                "left_url": f"https://synthetic.invalid/scenes/{self.ctx.number(left)}.png", "writer": "1",
                "label": label, "right_url": f"https://synthetic.invalid/scenes/{self.ctx.number(right)}.png",
                "synset": left.groups[0].shape, "query": f"{left.groups[0].shape} {pair}",
                "identifier": f"{name}-{pair}-0-{k}", "extra_validations": {"2": label, "3": label}})
            self.writer(f"data/finetune/nlvr_en/nlvr_{self.RAW_FILE[split]}.json", JsonListWriter,
                        ensure_ascii=False).write({"images": paths, "sentence": text, "label": label})
            self.ctx.train_text(left, text)

    def _concept(self, lang: str, shape: str) -> str:
        return f"{SHAPES.index(shape) + 1}-{grammar(lang).concept(shape)}"

    def _marvl_record(self, lang, concept, left_img, right_img, text, truth, kind) -> dict:
        key = (lang, kind)
        number = self.marvl_ids.get(key, 0)
        self.marvl_ids[key] = number + 1
        return {"concept": concept, "language": lang, "caption": text, "left_img": left_img, "right_img": right_img,
                "annotator_info": {"annotator_id": f"{lang}_01", "country_of_birth": "Synthetia",
                                   "country_of_residence": "Synthetia", "gender": "female", "age": 30},
                "chapter": "Shapes", "id": f"{lang}-{number}", "label": truth}

    def _place_marvl_pair(self, lang, left, right, left_image, right_image, few_shot: bool):
        """Place the pair's images where MaRVL keeps them; (concept, the two image names the records carry)."""
        concept = self._concept(lang, left.groups[0].shape)
        number = concept.split("-")[0]
        files = []
        for scene, image in ((left, left_image), (right, right_image)):
            n = self.ctx.number(scene)
            if few_shot:
                name = f"{number}-n-{n}.jpg"
                self.ctx.placer.put((n, "jpg"), f"images/marvl_fewshot/{lang}/all/{name}", image.jpeg)
                files.append(f"{concept}/{name}")
            else:
                files.append(f"{number}-{n}.jpg")
                self.ctx.placer.put((n, "jpg"), f"images/marvl-images/{lang}/images/{concept}/{files[-1]}",
                                    image.jpeg)
        return concept, files

    def marvl_zero_shot(self, left, right, left_image, right_image, statements):
        base = f"{IGLUE}/marvl/zero_shot"
        for lang in self.ctx.others:
            concept, files = self._place_marvl_pair(lang, left, right, left_image, right_image, few_shot=False)
            for statement, truth in statements:
                record = self._marvl_record(lang, concept, files[0], files[1], statement.render(grammar(lang)),
                                            truth, "zero")
                self.writer(f"{base}/annotations/marvl-{lang}.jsonl").write(record)
                gmt = dict(record, caption=statement.render(grammar("en")))
                self.writer(f"{base}/annotations_machine-translate/marvl-{lang}_gmt.jsonl").write(gmt)

    def marvl_few_shot(self, left, right, left_image, right_image, pair, statements):
        for lang in self.ctx.others:
            concept, files = self._place_marvl_pair(lang, left, right, left_image, right_image, few_shot=True)
            for k, (statement, truth) in enumerate(statements):
                text = statement.render(grammar(lang))
                self.ctx.train_text(left, text)
                record = None
                for suffix, size in self.MARVL_FEW_SHOT:
                    if 2 * pair + k < size:
                        record = record or self._marvl_record(lang, concept, files[0], files[1], text, truth, "few")
                        rel = f"{IGLUE}/marvl/few_shot/annotations/marvl-{lang}_train{suffix}.jsonl"
                        self.writer(rel).write(record)

    def end_split(self, split):
        self.pending = None
        super().end_split(split)


class WITBuilder(Builder):
    """WIT: annotations (several captions per image) and the Kaggle-style pixel CSVs (url, base64, meta url)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.pixels = {"trainval": [], "test": []}
        self.test_ix = 0
        self.train_ix = 0

    def csv(self, group: str, scene: Scene):
        folder = "images/wit_test" if group == "test" else "images/image_data_train/image_pixels"
        if not self.pixels[group]:
            for k in range(self.ctx.shards):
                rel = f"{folder}/part-{k:05d}.csv"
                path = self.ctx.root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                self.pixels[group].append(open(path, "w", encoding="utf-8", newline="\n"))
        return self.pixels[group][scene.index % self.ctx.shards]

    def add(self, scene, image):
        n = self.ctx.number(scene)
        url, meta = wit_url(n), f"http://commons.wikimedia.org/wiki/File:Synthetic_scene_{n}.jpg"
        self.csv("test" if scene.split == "test" else "trainval", scene).write(f"{url}\t{image.b64}\t{meta}\n")
        rng = self.ctx.rng("wit", scene)
        templates = caption_templates(rng, 1 + rng.randrange(3))
        base = f"{IGLUE}/wit/annotations"
        if scene.split == "test":
            self.test(scene, n, url, meta, templates)
            return
        for t in templates:
            text = caption(scene, grammar("en"), t)
            record = {"language": "en", "page_url": f"https://en.wikipedia.org/wiki/Synthetic_scene_{n}",
                      "image_url": url, "caption_reference_description": text, "wit_ix": f"wit_{self.train_ix}"}
            self.train_ix += 1
            if scene.split == "train":
                self.writer(f"{base}/train_en.jsonl").write(record)
                self.ctx.train_text(scene, text)
            else:
                self.writer(f"{base}/val_en.jsonl", PhpJsonlWriter).write(record)

    def test(self, scene, n, url, meta, templates):
        for t in templates:
            ix = f"wit-test_{self.test_ix}"
            self.test_ix += 1
            for lang in self.ctx.languages:
                record = {"image_idx": scene.index, "image_url": url, "meta_url": meta,
                          "caption_reference_description": caption(scene, grammar(lang), t), "language": lang,
                          "page_url": f"https://{lang}.wikipedia.org/wiki/Synthetic_scene_{n}", "wit_ix": ix}
                self.writer(f"{IGLUE}/wit/annotations/test_{lang}.jsonl").write(record)
                if lang != "en":
                    gmt = dict(record, caption_reference_description=caption(scene, grammar("en"), t))
                    self.writer(f"{IGLUE}/wit/annotations_machine-translate/test_{lang}_gmt.jsonl").write(gmt)

    def close(self):
        super().close()
        for handles in self.pixels.values():
            for h in handles:
                h.close()


BUILDERS = (SceneImagesBuilder, PretrainBuilder, RetrievalBuilder, FlickrBuilder, XVNLIBuilder, GQABuilder,
            NLVRBuilder, WITBuilder)
