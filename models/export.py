"""Write one of our checkpoints in the authors' key layout (docs/model.md#export), as a torch file or safetensors.

    python3 -m models.export --checkpoint output/xvnli/checkpoint_best.pth --out xvnli_reference.th
    python3 -m models.export --checkpoint output/cclm/checkpoint_latest.pth --out cclm_reference.safetensors
    options: --task NAME (check the checkpoint is of that task), --safetensors, --vision-config NAME_OR_JSON

The model a checkpoint was made for is read from its keys (pre-training, retrieval, classification, NLVR, NLVR
domain pre-training, VQA). The reference layout carries buffers our checkpoints leave out: Swin's relative-position
index and shifted-window masks, which depend on the image resolution, and the text position ids. The resolution
comes from ``--vision-config``, else from the run config saved in the checkpoint, else it is inferred from the Swin
weights as a model whose last stage is one window (true of every bundled config; the log says so). A checkpoint
already in the reference layout is written as it is (e.g. to turn a ``.th`` into safetensors).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from pathlib import Path

import torch

from models.vision import PATCH_SIZE, SwinVisionEncoder, load_vision_config
from models.weights.errors import CheckpointMismatchError
from models.weights.files import read_checkpoint
from models.weights.finetune import TASKS, checkpoint_task, detect_layout, ours_to_task_reference
from models.weights.keys import layer_indices, shape_mismatches, split_prefix, summary
from models.weights.pretrain import ours_to_reference
from models.weights.swin import TABLE_SUFFIX, VISION_PREFIX
from utils.errors import USER_ERROR_EXIT_CODE, UserError

logger = logging.getLogger(__name__)

# run.py's task names -> the model family whose checkpoints they write (the model families are also accepted)
TASK_MODELS = {"pretrain_cclm_3m": "pretrain", "pretrain_cclm_4m": "pretrain", "demo": "pretrain",
               "itr_multi30k": "retrieval", "itr_coco": "retrieval", "xflickrco": "retrieval", "wit": "retrieval",
               "xvnli": "classification", "gqa": "vqa", "nlvr": "nlvr", "nlvr_domain": "nlvr_domain",
               **{name: name for name in ("pretrain", *TASKS)}}


def export_state(state_dict: dict, task: str, vision_encoder: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """Our state dict of a ``task`` model ('pretrain' or one of ``TASKS``) in the reference layout, with the buffers
    of ``vision_encoder`` (and the text position ids) as the reference saves them."""
    if task == "pretrain":
        return ours_to_reference(state_dict, vision_encoder=vision_encoder)
    return ours_to_task_reference(state_dict, task, vision_encoder=vision_encoder)


def model_task(state_dict: dict, requested: str | None, what: str) -> str:
    """The model family of a checkpoint, from its keys; ``requested`` (a run.py task name or a model family) must
    agree with it."""
    found = checkpoint_task(state_dict)
    if not found:
        raise CheckpointMismatchError(f"{what}: its keys are not those of a CCLM model (first keys: "
                                      f"{', '.join(sorted(state_dict)[:3])})")
    if requested is not None:
        if requested not in TASK_MODELS:
            raise UserError(f"--task {requested!r}: not a task name; expected one of {', '.join(sorted(TASK_MODELS))}")
        if TASK_MODELS[requested] != found:
            raise CheckpointMismatchError(f"{what}: a {found} checkpoint, not one of --task {requested} "
                                          f"({TASK_MODELS[requested]})")
    return found


def vision_config_for(state_dict: dict, saved_config: dict | None, requested: str | None, what: str) -> dict:
    """The vision config whose buffers the export writes: ``requested``, else the one of the saved run config,
    else inferred from the Swin weights; checked against the weights' shapes."""
    if requested is not None:
        try:
            config = load_vision_config(requested)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(f"--vision-config: {err}") from err
    else:
        config = _saved_vision_config(saved_config) or infer_vision_config(state_dict, what)
    swin, _ = split_prefix(state_dict, VISION_PREFIX)
    with torch.device("meta"):
        own = SwinVisionEncoder(config).state_dict()
    wrong = shape_mismatches(swin, own) + [f"{k}: absent from the file" for k in own if k not in swin]
    if wrong:
        raise CheckpointMismatchError(f"{what}: its Swin weights do not match the vision config "
                                      f"{requested or config}: {summary(wrong)}; give --vision-config")
    return config


def _saved_vision_config(saved_config: dict | None) -> dict | None:
    spec = (saved_config or {}).get("vision_config")
    if spec is None:
        return None
    try:
        return load_vision_config(spec)
    except (FileNotFoundError, ValueError) as err:  # a path relative to another machine's data root
        logger.info("the saved vision_config %r is not readable here (%s); inferring it from the weights", spec, err)
        return None


def infer_vision_config(state_dict: dict, what: str = "checkpoint") -> dict:
    """The Swin config of our-layout weights: widths, depths and heads from the shapes, the window from the first
    stage's bias table, and the image resolution of a model whose last stage is one window (or smaller)."""
    swin, _ = split_prefix(state_dict, VISION_PREFIX)
    if "patch_embed.proj.weight" not in swin:
        raise CheckpointMismatchError(f"{what}: no Swin weights (vision_encoder.patch_embed.proj.weight) to export")
    depths = _swin_depths(swin)
    tables = [swin[f"layers.{i}.blocks.0.{TABLE_SUFFIX}"] for i in range(len(depths))]
    sides = [(math.isqrt(t.shape[0]) + 1) // 2 for t in tables]  # each stage's window, clamped to its size
    stride = PATCH_SIZE * 2 ** (len(depths) - 1)
    config = {"image_res": sides[-1] * stride, "window_size": sides[0],
              "embed_dim": swin["patch_embed.proj.weight"].shape[0], "depths": depths,
              "num_heads": [t.shape[1] for t in tables], "vision_width": swin["norm.weight"].shape[0]}
    logger.warning("%s: no vision config given or saved; inferred %s from the Swin weights (the image resolution "
                   "assumes the last stage is one window; give --vision-config otherwise)", what, config)
    return config


def _swin_depths(swin: dict) -> list[int]:
    """Blocks per stage of our-layout Swin keys (``layers.{i}.blocks.{j}.*``)."""
    stages = sorted({int(k.split(".")[1]) for k in swin if k.startswith("layers.")})
    return [len(layer_indices(swin, re.compile(rf"^layers\.{i}\.blocks\.(\d+)\.(.*)$"))) for i in stages]


def write_state(state_dict: dict[str, torch.Tensor], out: Path, as_safetensors: bool) -> Path:
    """Write ``state_dict`` atomically: safetensors (tied tensors stored once each, as copies) or ``{'model': sd}``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        if as_safetensors:
            from safetensors.torch import save_file

            save_file(_unshared(state_dict), str(tmp), metadata={"format": "pt"})
        else:
            torch.save({"model": state_dict}, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each storage once: safetensors refuses tensors that share memory (tied weights)."""
    seen, out = set(), {}
    for key, value in state_dict.items():
        value = value.detach().contiguous()
        pointer = value.untyped_storage().data_ptr()
        out[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, task: str | None = None, as_safetensors: bool = False,
                      vision_config: str | None = None) -> Path:
    """Read ``checkpoint``, convert it to the reference layout and write it to ``out``; returns ``out``."""
    what = str(checkpoint)
    state, saved_config = read_checkpoint(checkpoint)
    found = model_task(state, task, what)
    out = Path(out)
    as_safetensors = as_safetensors or out.suffix == ".safetensors"
    try:
        layout = detect_layout(state)
    except ValueError as err:
        raise CheckpointMismatchError(f"{what}: {err}") from err
    if layout.startswith("reference"):
        logger.info("%s is already in the reference layout (a %s checkpoint): written as it is", what, found)
        return write_state(state, out, as_safetensors)
    encoder = SwinVisionEncoder(vision_config_for(state, saved_config, vision_config, what))
    exported = export_state(state, found, encoder)
    logger.info("%s: a %s checkpoint, %d tensors in the reference layout -> %s", what, found, len(exported), out)
    return write_state(exported, out, as_safetensors)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 (one line on stderr) for a checkpoint or option to fix."""
    parser = argparse.ArgumentParser(prog="python3 -m models.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="our checkpoint (.pth/.th/.safetensors; a training "
                                                            "checkpoint's 'model' entry is used)")
    parser.add_argument("--out", required=True, type=Path, help="file to write (.safetensors selects safetensors)")
    parser.add_argument("--task", help="check that the checkpoint is of this run.py task (e.g. xvnli) or model "
                                       f"family ({', '.join(('pretrain', *TASKS))})")
    parser.add_argument("--safetensors", action="store_true", help="write safetensors instead of {'model': sd}")
    parser.add_argument("--vision-config", help="the Swin config the model ran with (bundled name or json path), "
                                                "for the buffers; default: the one saved in the checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.task, args.safetensors, args.vision_config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
