"""State-dict key operations every layout conversion uses: wrapper prefixes, the entries under a prefix, prefix
renames, layer-numbered keys and shape comparison with a model."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: dict, prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict:
    """Remove DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, however nested."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def split_prefix(state_dict: Mapping, prefix: str) -> tuple[dict, dict]:
    """(the entries under ``prefix`` with the prefix removed, every other entry as it is)."""
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    outside = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    return inside, outside


def add_prefix(state_dict: Mapping, prefix: str) -> dict:
    """Every key of ``state_dict`` with ``prefix`` in front."""
    return {prefix + k: v for k, v in state_dict.items()}


def renamed(key: str, renames: Iterable[tuple[str, str]]) -> str | None:
    """``key`` with the first matching old prefix of ``renames`` ((old, new) pairs) replaced by the new one; None
    when no old prefix matches."""
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def layer_key_pattern(prefix: str) -> re.Pattern:
    """Matches ``{prefix}encoder.layer.{N}.{rest}``; groups: N, rest."""
    return re.compile("^" + re.escape(prefix) + r"encoder\.layer\.(\d+)\.(.*)$")


def layer_indices(state_dict: Iterable[str], pattern: re.Pattern) -> list[int]:
    """The sorted layer numbers of the keys that ``pattern`` (a :func:`layer_key_pattern`) matches."""
    return sorted({int(m.group(1)) for k in state_dict if (m := pattern.match(k))})


def shape_mismatches(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """'key: file (shape) vs model (shape)' for every key both have with different shapes."""
    return [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state_dict.items() if k in own and v.shape != own[k].shape]


def summary(items: list[str], limit: int = 3) -> str:
    """The first ``limit`` items, '; '-joined, and how many more there are (for one-line messages)."""
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more
