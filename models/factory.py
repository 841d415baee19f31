"""Model factory: ``create_model(name, config)`` builds a registered CCLM model from a plain config dict, with or
without the initial ImageNet / XLM-R weights; ``checkpoint_fills_encoders`` tells from a checkpoint's keys whether they
are needed (docs/model.md#starting-weights)."""
from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

# name -> "module:Class"; classes take (config: dict, root=None, **kwargs). Imported only when asked for.
MODELS: dict[str, str] = {
    "cclm_pretrain": "models.cclm:CCLMPretrain",
    "cclm_retrieval": "models.retrieval:CCLMRetrieval",
    "cclm_classification": "models.classification:CCLMClassification",
    "cclm_nlvr": "models.nlvr:CCLMNLVR",
    "cclm_nlvr_domain": "models.nlvr:CCLMNLVRDomain",
    "cclm_vqa": "models.vqa:CCLMVQA",
}


def register_model(name: str, target: str) -> None:
    """Register ``target`` ('package.module:ClassName') under ``name``."""
    if ":" not in target:
        raise ValueError(f"register_model({name!r}): target must look like 'package.module:ClassName', got {target!r}")
    MODELS[name] = target


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}")
    module_name, class_name = MODELS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


# The encoders whose initial weights (ImageNet Swin, XLM-R) the config can ask for.
ENCODERS = ("vision_encoder.", "text_encoder.")


def create_model(name: str, config: dict, root: str | Path | None = None, pretrained: str | Path | None = None,
                 initial_weights: bool = True, **kwargs) -> nn.Module:
    """Build model ``name`` from ``config`` (relative paths resolve against ``root``).

    ``initial_weights=False`` builds it without the initial weights the config asks for (``load_vision_params`` /
    ``load_text_params``: the ImageNet Swin and XLM-R files), for a checkpoint that replaces them (see
    :func:`checkpoint_fills_encoders`). ``pretrained`` loads a checkpoint through the model's ``load_pretrained``
    (which reports missing and unexpected keys)."""
    if not initial_weights:
        config = dict(config, load_vision_params=False, load_text_params=False)
    model = model_class(name)(config, root=root, **kwargs)
    if pretrained is not None:
        if not hasattr(model, "load_pretrained"):
            raise TypeError(f"model {name!r} has no load_pretrained(); load the checkpoint explicitly")
        model.load_pretrained(pretrained)
    return model


def checkpoint_fills_encoders(name: str, config: dict, checkpoint: str | Path, root: str | Path | None = None,
                              is_eval: bool = False) -> bool:
    """Whether ``checkpoint`` holds every weight of model ``name``'s vision and text encoders, i.e. whether the model
    can be built with ``create_model(..., initial_weights=False)`` and lose nothing once the checkpoint is loaded.

    Cheap: only the file's keys and shapes are read, and the model is built on the ``meta`` device (no weights).
    A checkpoint that cannot be read or does not fit the model raises (``WeightsFileError`` /
    ``CheckpointMismatchError``, both user errors naming the file) before anything is built for real.
    """
    import torch

    from models.weights.files import read_tensor_shapes
    from models.weights.loading import check_fits, convert_checkpoint, missing_weights

    with torch.device("meta"):
        model = model_class(name)(dict(config, load_vision_params=False, load_text_params=False), root=root)
    state = read_tensor_shapes(checkpoint)
    converted, _ = convert_checkpoint(model, state, is_eval=is_eval, what=str(checkpoint))
    check_fits(model, state, converted, is_eval=is_eval, what=str(checkpoint))
    return not any(key.startswith(ENCODERS) for key in missing_weights(model, converted))
