"""Model factory: ``create_model(name, config)`` builds a registered CCLM model from a plain config dict."""
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


def create_model(name: str, config: dict, root: str | Path | None = None, pretrained: str | Path | None = None,
                 **kwargs) -> nn.Module:
    """Build model ``name`` from ``config`` (relative paths resolve against ``root``); optionally load a checkpoint
    through the model's ``load_pretrained`` (which reports missing and unexpected keys)."""
    model = model_class(name)(config, root=root, **kwargs)
    if pretrained is not None:
        if not hasattr(model, "load_pretrained"):
            raise TypeError(f"model {name!r} has no load_pretrained(); load the checkpoint explicitly")
        model.load_pretrained(pretrained)
    return model
