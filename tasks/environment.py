"""What a run needs before its data and model: where the data is (a real folder or a generated synthetic world), the
text encoder folder the model and tokenizer load from, and the starting weights."""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Mapping

import huggingface_hub

from dataset.synthetic import ensure_world
from dataset.tokenizer import check_xlmr_layout, load_tokenizer
from utils.config import ConfigError
from utils.dist import barrier, is_main_process

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CCLM_CACHE", ROOT / "cache"))


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def resolve_data_root(config: dict) -> Path:
    """The folder data paths are relative to.

    With a ``synthetic:`` block, a synthetic world is generated (once, by rank 0, cached under ``cache/``) and
    that folder is the root; otherwise ``data_root``, the environment variable ``CCLM_DATA``, or the working directory.
    """
    params = config.get("synthetic")
    if params:
        out = CACHE / "synthetic" / f"world-{_digest(params)}"
        if is_main_process():
            ensure_world(out, **params)
        barrier()
        return out
    root = config.get("data_root") or os.environ.get("CCLM_DATA") or "."
    return Path(root).expanduser().resolve()


HUB_TIMEOUT_SECONDS = 5.0   # one attempt at the hub; a run never waits on its retries


def resolve_text_encoder(name: str, data_root: Path) -> str:
    """The local folder ``name`` names (under ``data_root``, else as given), or a hub id the hub (or its local
    cache) can provide now. Anything else fails at once, in one line naming the config key and what to do."""
    for candidate in (Path(data_root) / name, Path(name).expanduser()):
        if candidate.is_dir():
            return str(candidate)
    where = f"config key 'text_encoder': {name!r} is no folder under data_root ({data_root}) or the working directory"
    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):  # a path: cached
            return name
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            raise OSError("the hub is switched off (HF_HUB_OFFLINE) and its cache does not hold it")
        huggingface_hub.HfApi().model_info(name, timeout=HUB_TIMEOUT_SECONDS)  # one request, no retries
    except Exception as e:  # any hub failure: bad id, no network, not found, timeout
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{where}, and the model hub cannot provide it ({reason[:200]}). Point it at a local "
                          "folder holding config.json and the tokenizer files: --opts text_encoder=PATH (relative to "
                          "data_root), or download it where a hub is reachable, e.g. `huggingface-cli download "
                          "xlm-roberta-large --local-dir data/xlm-roberta-large`") from None
    return name


def prepare_text_encoder(config: dict, data_root: Path) -> str:
    """The text encoder folder or hub id the model and tokenizer load from.

    With ``text_config`` (a dict of XLM-R config values) a weightless folder is made: that config, with the vocabulary
    size of the tokenizer found at ``text_encoder``, next to a copy of the tokenizer. Used by the tiny configs.
    """
    source = resolve_text_encoder(str(config["text_encoder"]), data_root)
    text_config = config.get("text_config")
    if not text_config:
        return source
    out = CACHE / "text-encoders" / f"{Path(source).name}-{_digest([source, text_config])}"
    if is_main_process() and not (out / "config.json").is_file():
        from transformers import XLMRobertaConfig

        tokenizer = load_tokenizer(source)
        check_xlmr_layout(tokenizer, where=source)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tokenizer.save_pretrained(str(tmp))
        values = {"vocab_size": len(tokenizer), "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
                  "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5, **text_config}
        XLMRobertaConfig(**values).save_pretrained(str(tmp))
        os.replace(tmp, out)
    barrier()
    return str(out)


def load_starting_weights(model, config: Mapping) -> None:
    """Load ``config['checkpoint']`` into the model through its ``load_pretrained`` (which reports key mismatches).

    ``--evaluate`` needs a checkpoint that fills the whole model: evaluating random weights is an error."""
    path = config.get("checkpoint")
    evaluate = bool(config.get("evaluate"))
    if not path:
        if evaluate:
            raise ConfigError("--evaluate needs --checkpoint (the fine-tuned weights to evaluate)")
        if getattr(model, "task", None) not in (None, "pretrain"):
            logger.warning("no --checkpoint: fine-tuning starts from the text encoder's and the vision config's "
                           "initialisation, not from a pre-trained CCLM")
        return
    kwargs = {"is_eval": True} if evaluate and _accepts(model.load_pretrained, "is_eval") else {}
    report = model.load_pretrained(path, **kwargs)
    logger.info("loaded %s: %s", path, report)
    untrained = list(report.missing) + list(getattr(report, "initialised", []))  # initialised: task models only
    if evaluate and untrained:
        raise ConfigError(f"--evaluate: {path} does not hold these weights of the "
                          f"{getattr(model, 'task', 'task')} model, which would be evaluated at random initialisation: "
                          f"{', '.join(untrained[:8])}{' ...' if len(untrained) > 8 else ''} "
                          "(is it a checkpoint fine-tuned on this task?)")


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
