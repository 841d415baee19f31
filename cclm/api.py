"""Use a CCLM model from Python: load it with its image transform and tokenizer in one call, embed images and texts
(any language) as L2-normalised features, and rank one against the other, optionally re-ranking the top candidates
with the matching (ITM) head.

Everything goes through the retrieval evaluation's own pieces, so features and orders are the evaluation's: the
test transform (``dataset.transforms``), the caption cleaning (``dataset.text.pre_caption``) and truncation to
``max_tokens``, the encoders and the batched two-stage re-rank of ``models/ranking.py``.

    import cclm
    model = cclm.load("output/demo/with_parallel_text/checkpoint_latest.pth")      # device, precision: auto
    images = model.encode_images(["a.jpg", "b.jpg"])              # (2, E) float32, unit norm
    texts = model.encode_texts(["ein roter Kreis links", "左に赤い丸があります"])
    model.similarity(texts, images)                               # (2, 2) cosine similarities
    ranking = model.rank(["ein roter Kreis links"], ["a.jpg", "b.jpg"], top_k=2, rerank_k=2)
    ranking.indices[0], ranking.scores[0]                         # best first (scores: ITM logits when re-ranked)
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from PIL import Image
from torch import nn

from dataset.images import load_image
from dataset.text import pre_caption
from dataset.tokenizer import load_tokenizer
from dataset.transforms import build_transform
from models.cclm import resolve_path
from models.factory import create_model
from models.ranking import CCLMView, EncodedImages, EncodedTexts, encode_images, encode_texts, rerank_topk
from models.ranking import candidates as stage_one
from models.vision import load_vision_config
from models.weights.keys import strip_prefixes
from models.weights.loading import load_state_dict_reporting
from models.weights.swin import is_reference_layout
from utils.checkpoint import load_file, model_state_from_file
from utils.config import load_config, merge
from utils.errors import UserError
from utils.precision import PRECISIONS, autocast_context

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# Embedding and ranking need the encoders, the contrastive projections and the ITM head: a pre-training checkpoint
# loads into the pre-training model as it is, any other into the retrieval model (the fine-tuning load rules).
MODELS = {"pretrain": "cclm_pretrain", "finetuned": "cclm_retrieval"}
# A checkpoint without its own config (a released .th) is read with the reference's settings: its pre-training
# (Swin-B 224 px, window 7) or its retrieval fine-tuning (Swin-B 384 px, window 12). (config, schema)
RELEASED_CONFIGS = {"pretrain": ("configs/Pretrain_4m.yaml", "configs/base/pretrain.yaml"),
                    "finetuned": ("configs/retrieval/multi30k_all.yaml", "configs/base/retrieval.yaml")}
PRETRAINING_ONLY = ("text_encoder.cls.", "bbox_head.")   # modules only a pre-training checkpoint has
FINGERPRINT_MODULES = ("vision_proj.", "text_proj.", "itm_head.", "temp")
DEFAULT_MAX_WORDS, DEFAULT_MAX_TOKENS = 30, 40
TEXT_BATCH = 64
PROGRESS_AFTER_BATCHES = 4  # progress=None shows a bar when an input takes more batches than this
TEXT_CHUNK_BATCHES = 8      # texts are encoded this many batches at a time (bounds the memory of the states)


class CheckpointError(UserError):
    """A checkpoint, config or text encoder folder that cannot give a usable model (the message names it)."""


@dataclass
class Ranking:
    """Each query's best candidates: ``indices`` and ``scores`` are (queries, k), best first. Scores are cosine
    similarities, or the matching head's logits for re-ranked lists (``reranked``)."""

    indices: torch.Tensor
    scores: torch.Tensor
    direction: str            # "t2i" (text queries, image candidates) or "i2t"
    reranked: bool

    def __len__(self) -> int:
        return self.indices.shape[0]

    def __getitem__(self, query: int) -> list[tuple[int, float]]:
        """(candidate index, score) pairs of one query, best first."""
        return list(zip(self.indices[query].tolist(), self.scores[query].tolist()))


@dataclass
class CCLM:
    """A loaded model with its image transform and tokenizer (made by :func:`load`)."""

    model: nn.Module
    tokenizer: Any
    transform: Callable                 # PIL image -> normalised 3 x image_res x image_res tensor (the test transform)
    config: dict
    device: torch.device
    precision: str                      # fp32 | bf16 | fp16 (autocast)
    identity: dict = field(default_factory=dict)   # what identifies the weights (see model_identity)
    load_report: Any = None             # the checkpoint loader's report: missing, unexpected and dropped keys

    def __post_init__(self):
        self.view = CCLMView(self.model)

    @property
    def image_res(self) -> int:
        return int(self.config["image_res"])

    @property
    def max_words(self) -> int:
        return int(self.config.get("max_words") or DEFAULT_MAX_WORDS)

    @property
    def max_tokens(self) -> int:
        return int(self.config.get("max_tokens") or DEFAULT_MAX_TOKENS)

    @property
    def rerank_batch(self) -> int:
        return int(self.config.get("rerank_batch") or 128)

    # ------------------------------------------------------------------------------------------ features
    def encode_images(self, images, batch_size: int = 32, progress: bool | None = None) -> torch.Tensor:
        """L2-normalised image features (N x E, float32, on the model's device) of image paths, PIL images, or
        tensors made by ``transform`` (one 3 x R x R, a batch N x 3 x R x R, or a list)."""
        feats = [self._encode_image_batch(batch).feats.float()
                 for batch in self._progress(self.image_batches(images, batch_size), _count(images), batch_size,
                                             progress, "images")]
        return torch.cat(feats) if feats else torch.empty(0, self.embed_dim, device=self.device)

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = TEXT_BATCH,
                     progress: bool | None = None) -> torch.Tensor:
        """L2-normalised text features (N x E, float32, on the model's device) of texts in any language, cleaned and
        truncated as the evaluation does (``max_words`` words, ``max_tokens`` tokens)."""
        cleaned = self.clean_texts(texts)
        chunk = batch_size * TEXT_CHUNK_BATCHES
        parts = (cleaned[start:start + chunk] for start in range(0, len(cleaned), chunk))
        feats = [self._encode_text_list(part, batch_size).feats.float()
                 for part in self._progress(parts, len(cleaned), chunk, progress, "texts")]
        return torch.cat(feats) if feats else torch.empty(0, self.embed_dim, device=self.device)

    def similarity(self, a, b) -> torch.Tensor:
        """Cosine similarities (len(a) x len(b), float32) of two sets of features or inputs (texts or images)."""
        fa, fb = self._features(a), self._features(b)
        return fa.float() @ fb.float().t().to(fa.device)

    # ------------------------------------------------------------------------------------------ ranking
    def rank(self, queries, candidates, top_k: int = 10, rerank_k: int = 0, batch_size: int = 32,
             progress: bool | None = None) -> Ranking:
        """Rank ``candidates`` for each query, texts against images or images against texts (strings are texts;
        images are paths as ``pathlib.Path``, PIL images or tensors).

        Stage 1 orders by contrastive similarity; with ``rerank_k`` the top ``rerank_k`` candidates of each query are
        re-scored by the matching head, in the retrieval evaluation's batched re-rank (``top_k <= rerank_k``)."""
        direction = _direction(queries, candidates)
        texts, images = (queries, candidates) if direction == "t2i" else (candidates, queries)
        if rerank_k < 0 or top_k < 1:
            raise ValueError(f"rank: top_k must be >= 1 and rerank_k >= 0, got top_k={top_k}, rerank_k={rerank_k}")
        if rerank_k and top_k > rerank_k:
            raise ValueError(f"rank: top_k {top_k} > rerank_k {rerank_k}: only the re-ranked candidates are ordered by "
                             "the matching head; ask for top_k <= rerank_k")
        if not rerank_k:
            sims = self.similarity(self._features(images, batch_size, progress), self.encode_texts(texts))
            idx = stage_one(sims, top_k, direction)
            oriented = sims.t() if direction == "t2i" else sims
            return Ranking(idx.cpu(), oriented.gather(1, idx).cpu(), direction, reranked=False)
        img = self._encode_images_full(images, batch_size, progress)
        txt = self._encode_text_list(self.clean_texts(texts), TEXT_BATCH)
        with torch.no_grad(), self.autocast():
            idx, scores = rerank_topk(self.view, img, txt, rerank_k, self.rerank_batch, directions=(direction,))[
                direction]
        return Ranking(idx[:, :top_k], scores[:, :top_k].float(), direction, reranked=True)

    # ------------------------------------------------------------------------------------------ building blocks
    @property
    def embed_dim(self) -> int:
        return int(self.model.text_proj.out_features)

    def autocast(self):
        """The autocast context of the chosen precision on the model's device."""
        return autocast_context(self.precision, self.device)

    def clean_texts(self, texts: str | Sequence[str]) -> list[str]:
        """Texts cleaned as the evaluation cleans captions; a text with nothing left is a ValueError naming it."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i}: expected a string, got {type(text).__name__}")
            try:
                out.append(pre_caption(text, self.max_words))
            except ValueError:
                raise ValueError(f"text {i} ({text!r}) has no word left after cleaning") from None
        return out

    def image_tensor(self, image, where: str = "image") -> torch.Tensor:
        """One image (path, PIL image or transformed tensor) as the model's 3 x R x R input."""
        if isinstance(image, torch.Tensor):
            expected = (3, self.image_res, self.image_res)
            if tuple(image.shape) != expected:
                raise ValueError(f"{where}: a tensor of shape {tuple(image.shape)}; expected {expected}, as "
                                 "model.transform makes from a PIL image")
            return image
        if isinstance(image, Image.Image):
            return self.transform(image.convert("RGB"))
        if isinstance(image, (str, os.PathLike)):
            return self.transform(load_image(image))
        raise TypeError(f"{where}: expected a path, a PIL image or a tensor, got {type(image).__name__}")

    def image_batches(self, images, batch_size: int) -> Iterator[torch.Tensor]:
        """B x 3 x R x R batches of the model's input, in order."""
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            self.image_tensor(images[0], "images")  # one check of the batch's shape
            yield from images.split(batch_size)
            return
        items = _as_list(images)
        for start in range(0, len(items), batch_size):
            yield torch.stack([self.image_tensor(item, f"image {start + i}")
                               for i, item in enumerate(items[start:start + batch_size])])

    def _encode_image_batch(self, batch: torch.Tensor) -> EncodedImages:
        with torch.no_grad(), self.autocast():
            return encode_images(self.view, [batch], self.device)

    def _encode_images_full(self, images, batch_size: int, progress: bool | None) -> EncodedImages:
        """Vision tokens and features of every image (what the re-rank needs)."""
        batches = self._progress(self.image_batches(images, batch_size), _count(images), batch_size, progress,
                                 "images")
        with torch.no_grad(), self.autocast():
            return encode_images(self.view, batches, self.device)

    def _encode_text_list(self, cleaned: list[str], batch_size: int) -> EncodedTexts:
        with torch.no_grad(), self.autocast():
            return encode_texts(self.view, cleaned, self.tokenizer, self.max_tokens, batch_size, self.device)

    def _features(self, x, batch_size: int = 32, progress: bool | None = None) -> torch.Tensor:
        """Features as they are (a 2-D float tensor of width E), or computed from texts or images."""
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.is_floating_point() and x.shape[1] == self.embed_dim:
            return x
        if _is_text(x):
            return self.encode_texts(x)
        return self.encode_images(x, batch_size, progress)

    def _progress(self, iterable, n_items: int | None, per_step: int, progress: bool | None, what: str):
        steps = None if n_items is None else -(-n_items // per_step)
        show = progress if progress is not None else (steps is not None and steps > PROGRESS_AFTER_BATCHES)
        if not show:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=steps, desc=f"encoding {what}", unit="batch", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- loading

def load(checkpoint: str | os.PathLike, *, config: Mapping | str | os.PathLike | None = None,
         text_encoder: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
         device: str | torch.device = "auto", precision: str = "auto") -> CCLM:
    """A CCLM model ready to embed and rank, with its image transform and tokenizer.

    ``checkpoint``: a released CCLM pre-training ``.th`` (3M/4M), a fine-tuned retrieval checkpoint (the reference's
    or ours), or any of our training checkpoints (the demo's included), which carry their config. ``config``: model
    keys (a dict or a YAML file) over the checkpoint's own config or, for a released file, the reference's settings.
    ``text_encoder``: the folder with the tokenizer and the text encoder's ``config.json`` (default: the config's,
    relative to ``data_root``, ``CCLM_DATA`` or the working directory). ``device``: auto (CUDA when available) or a
    torch device; ``meta`` builds the model without memory (to check that a checkpoint fits). ``precision``: auto
    (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.
    """
    path = Path(checkpoint)
    state, saved_config = read_checkpoint(path)
    model_config = model_config_for(state, saved_config, config, path)
    root = Path(data_root or model_config.get("data_root") or os.environ.get("CCLM_DATA") or ".")
    model_config["text_encoder"] = resolve_path(text_encoder or model_config["text_encoder"], root)
    tokenizer = load_text_tokenizer(model_config["text_encoder"])
    dev = resolve_device(device)
    model, report = build_and_load(model_config, state, path, root, dev)
    chosen = resolve_api_precision(precision, dev)
    identity = model_identity(model, model_config, path)
    logger.info("loaded %s (%s, %s): %d dropped keys, image %d px, features %d", path, dev, chosen,
                len(getattr(report, "dropped", {}) or {}), model_config["image_res"], identity["embed_dim"])
    return CCLM(model, tokenizer, build_transform("test", int(model_config["image_res"])), model_config, dev, chosen,
                identity, report)


def read_checkpoint(path: Path) -> tuple[dict, dict | None]:
    """(state dict, the run config saved with it or None), read once, safely (``weights_only``)."""
    try:
        obj = load_file(path)
        state = model_state_from_file(obj, where=str(path))
    except (FileNotFoundError, RuntimeError, KeyError) as err:
        raise CheckpointError(_one_line(err)) from None
    saved = obj.get("config") if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping) else None
    return state, dict(saved) if saved is not None else None


def model_config_for(state: Mapping, saved: dict | None, override: Mapping | str | os.PathLike | None,
                     path: Path) -> dict:
    """The model config: the checkpoint's own, else the reference's for its kind; ``override`` on top; every weight
    from the checkpoint (no ImageNet Swin or XLM-R file is read)."""
    if saved is None:
        kind = checkpoint_kind(state)
        file, schema = RELEASED_CONFIGS[kind]
        saved = load_config(REPO / file, schema=REPO / schema)
        logger.info("%s has no config: using %s (the reference's %s settings)", path, file, kind)
    config = dict(saved)
    if override is not None:
        extra = load_config(override) if isinstance(override, (str, os.PathLike)) else dict(override)
        config = merge(config, extra)
    config.update(load_vision_params=False, load_text_params=False)
    if not config.get("image_res"):
        config["image_res"] = _vision_config(config)["image_res"]
    for key in ("vision_config", "text_encoder"):
        if not config.get(key):
            raise CheckpointError(f"{path}: the model config has no {key!r}; pass config={{'{key}': ...}}")
    return config


def checkpoint_kind(state: Mapping) -> str:
    """'pretrain' for a pre-training checkpoint (it has the MLM or box head), else 'finetuned'."""
    return "pretrain" if any(k.startswith(PRETRAINING_ONLY) for k in state) else "finetuned"


def load_text_tokenizer(text_encoder: str):
    """The tokenizer of the text encoder folder (or hub id), or a one-line error saying what to pass."""
    try:
        return load_tokenizer(text_encoder)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"no tokenizer at text encoder {text_encoder!r} ({_one_line(err)[:200]}); pass "
                              "text_encoder= a folder with the tokenizer files and the text encoder's config.json "
                              "(for the released checkpoints: a download of xlm-roberta-large)") from None


def build_and_load(config: dict, state: dict, path: Path, root: Path, device: torch.device):
    """The model built from ``config`` with the checkpoint's weights (the models' own loader and its key report)."""
    name = MODELS[checkpoint_kind(state)]
    try:
        with torch.device("meta") if device.type == "meta" else contextlib.nullcontext():
            model = create_model(name, config, root=root)
        report = load_weights(model, state, str(path))
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot load it into the {name} model: {_one_line(err)}") from None
    if report.missing:
        raise CheckpointError(f"{path}: lacks {len(report.missing)} weight(s) that embedding and ranking need "
                              f"({', '.join(report.missing[:4])}{' ...' if len(report.missing) > 4 else ''}); "
                              "use a CCLM pre-training or retrieval checkpoint")
    if report.unexpected:
        logger.warning("%s: %d keys the model does not use: %s", path, len(report.unexpected),
                       ", ".join(report.unexpected[:8]))
    return model.to(device).eval(), report


def load_weights(model: nn.Module, state: dict, what: str):
    """The checkpoint into the model through the models' loader, which reports every missing and unexpected key.

    Our own pre-training checkpoints are already in the model's keys: they load as they are (``load_pretrained`` of
    the pre-training model still expects the reference's Swin layout there)."""
    vision = {k[len("vision_encoder."):]: v for k, v in state.items() if k.startswith("vision_encoder.")}
    if getattr(model, "task", "pretrain") == "pretrain" and vision and not is_reference_layout(vision):
        return load_state_dict_reporting(model, strip_prefixes(state), what=what)
    return model.load_pretrained(state)


def resolve_device(device: str | torch.device) -> torch.device:
    """auto -> cuda when available, else cpu; anything else as torch names it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} was asked for but CUDA is not available")
    return dev


def resolve_api_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def model_identity(model: nn.Module, config: Mapping, checkpoint: Path) -> dict:
    """What says that two loads give the same features: a fingerprint of the projection and matching weights (any
    two trained models differ there), the feature width and the image resolution; plus where the weights came from."""
    fingerprint = None
    if not any(p.is_meta for p in model.parameters()):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            if name.startswith(FINGERPRINT_MODULES):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        fingerprint = digest.hexdigest()[:32]
    return {"fingerprint": fingerprint, "embed_dim": int(model.text_proj.out_features),
            "image_res": int(config["image_res"]), "checkpoint": str(checkpoint.resolve()),
            "text_encoder": str(config["text_encoder"])}


# ---------------------------------------------------------------------------------------------- helpers

def _vision_config(config: Mapping) -> dict:
    return load_vision_config(config["vision_config"])


def _is_text(x) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, str) for t in x))


def _direction(queries, candidates) -> str:
    q, c = _is_text(queries), _is_text(candidates)
    if q == c:
        kind = "texts" if q else "images"
        raise ValueError(f"rank: queries and candidates are both {kind}; rank texts against images or images against "
                         "texts")
    return "t2i" if q else "i2t"


def _as_list(images) -> list:
    if isinstance(images, torch.Tensor):
        return [images] if images.dim() == 3 else list(images)
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    return list(images)


def _count(items: Iterable) -> int | None:
    if isinstance(items, torch.Tensor):
        return 1 if items.dim() == 3 else items.shape[0]
    if isinstance(items, (str, os.PathLike, Image.Image)):
        return 1
    return len(items) if hasattr(items, "__len__") else None


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())
