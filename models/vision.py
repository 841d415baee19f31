"""Swin-B vision encoder on timm's SwinTransformer, with the reference's output format and checkpoint layouts.

Output: the final LayerNorm-ed patch tokens with their mean prepended as a "CLS" token (B x (1+L) x width).
Region mode (4M box objective): the first token becomes the mask-weighted mean of the patches.

Two state-dict layouts exist:
- reference / official Microsoft Swin: PatchMerging at the END of stage i (`layers.i.downsample`), buffers
  `relative_position_index` / `attn_mask` saved, a classifier `head.*` in the ImageNet files;
- ours (timm 1.x): PatchMerging at the START of stage i+1 (`layers.{i+1}.downsample`), buffers not saved, no head.
Block, patch-embedding and final-norm names are identical in both.
"""
import json
import logging
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.interpolate import RectBivariateSpline
from timm.models.swin_transformer import SwinTransformer, WindowAttention

from models.fast_ops import host_checkable, softmax_last_dim

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "vision"
REQUIRED_KEYS = ("image_res", "window_size", "embed_dim", "depths", "num_heads", "vision_width")
OPTIONAL_KEYS = ("ckpt",)
# The reference treats Swin as a ViT with patch size 32: 4-pixel patches, then three 2x merges.
PATCH_SIZE = 4

_BUFFER_NAMES = ("relative_position_index", "attn_mask")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")
_TABLE_SUFFIX = "attn.relative_position_bias_table"


# --------------------------------------------------------------------------------------------- config

def load_vision_config(spec: Union[str, Path, dict]) -> dict:
    """Read and validate a reference-format Swin config given as a json path, a bundled name or a dict."""
    if isinstance(spec, dict):
        config, source = dict(spec), "<vision config dict>"
    else:
        path = _resolve_config_path(spec)
        source = str(path)
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid json (line {err.lineno}): {err.msg}") from err
        if not isinstance(config, dict):
            raise ValueError(f"{path}: expected a json object, got {type(config).__name__}")
    _validate_vision_config(config, source)
    return config


def _resolve_config_path(spec: Union[str, Path]) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{spec}.json"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    raise FileNotFoundError(f"vision config {spec!r}: no such file and no bundled config of that name "
                            f"(bundled: {', '.join(names)})")


def _validate_vision_config(config: dict, source: str) -> None:
    unknown = sorted(set(config) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: {list(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in config:
            raise ValueError(f"{source}: missing key {key!r}")
    for key in ("image_res", "window_size", "embed_dim", "vision_width"):
        if not _is_positive_int(config[key]):
            raise ValueError(f"{source}: {key!r} must be a positive integer, got {config[key]!r}")
    for key in ("depths", "num_heads"):
        value = config[key]
        if not isinstance(value, list) or not value or not all(_is_positive_int(v) for v in value):
            raise ValueError(f"{source}: {key!r} must be a non-empty list of positive integers, got {value!r}")
    if len(config["depths"]) != len(config["num_heads"]):
        raise ValueError(f"{source}: 'depths' and 'num_heads' differ in length "
                         f"({len(config['depths'])} vs {len(config['num_heads'])})")
    if "ckpt" in config and not isinstance(config["ckpt"], str):
        raise ValueError(f"{source}: 'ckpt' must be a path string, got {config['ckpt']!r}")
    _validate_geometry(config, source)


def _validate_geometry(config: dict, source: str) -> None:
    num_stages = len(config["depths"])
    dims = [config["embed_dim"] * 2 ** i for i in range(num_stages)]
    if config["vision_width"] != dims[-1]:
        raise ValueError(f"{source}: 'vision_width' {config['vision_width']} must equal embed_dim * 2^(stages-1) "
                         f"= {dims[-1]}")
    for stage, (dim, heads) in enumerate(zip(dims, config["num_heads"])):
        if dim % heads:
            raise ValueError(f"{source}: 'num_heads'[{stage}]={heads} does not divide the stage width {dim}")
    stride = PATCH_SIZE * 2 ** (num_stages - 1)
    if config["image_res"] % stride:
        raise ValueError(f"{source}: 'image_res' {config['image_res']} must be a multiple of {stride}")
    # The reference (official Swin v1) cannot pad: every stage larger than the window must tile exactly.
    for stage, size in enumerate(_stage_sizes(config)):
        if size > config["window_size"] and size % config["window_size"]:
            raise ValueError(f"{source}: 'window_size' {config['window_size']} does not tile stage {stage} "
                             f"({size}x{size} tokens)")


def _stage_sizes(config: dict) -> List[int]:
    first = config["image_res"] // PATCH_SIZE
    return [first // 2 ** i for i in range(len(config["depths"]))]


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# --------------------------------------------------------------------------------------------- encoder

class _OnePassBiasWindowAttention(WindowAttention):
    """timm's window attention with the relative-position bias and the shifted-window mask summed first (a small
    nW x heads x N x N tensor) and added to the scores once, in the scores' dtype.

    Same maths as timm's unfused path in float32; under bf16 autocast the N_windows x heads x N x N scores are no
    longer promoted to float32 by the float32 bias (one add, a bf16 softmax with float accumulation, no casts), which
    was the largest cost of the tiny Swin's step on CPU. On CUDA the attention runs through SDPA, like timm's fused
    path. The bias table is gathered with index_select (a deterministic backward). Instances of timm's class are
    switched to this one in SwinVisionEncoder (no state is added).
    """

    use_sdpa: Optional[bool] = None  # None: SDPA on CUDA, the explicit softmax elsewhere (faster on CPU with a bias)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch_windows, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch_windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self._get_rel_pos_bias()  # 1 x heads x N x N
        if mask is not None:
            bias = bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)  # 1 x nW x heads x N x N
        if self.use_sdpa if self.use_sdpa is not None else x.is_cuda:
            x = self._fused_attention(q, k, v, bias)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = (attn.view(-1, *bias.shape[1:]) + bias.to(attn.dtype)).view(attn.shape)
            x = self.attn_drop(softmax_last_dim(attn)) @ v
        x = x.transpose(1, 2).reshape(batch_windows, tokens, -1)
        return self.proj_drop(self.proj(x))

    def _get_rel_pos_bias(self) -> torch.Tensor:
        """1 x heads x N x N bias from the table, gathered with index_select: the backward of timm's table[index]
        (repeated indices) adds with atomics on multi-threaded CPUs once large enough (Swin-B): non-deterministic."""
        rows = self.relative_position_bias_table.index_select(0, self.relative_position_index.view(-1))
        return rows.view(self.window_area, self.window_area, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def _fused_attention(self, q, k, v, bias) -> torch.Tensor:
        """The same attention through SDPA (on CUDA its memory-efficient kernel also gives the bias gradient)."""
        bias = bias.to(q.dtype)
        if bias.dim() == 5:  # 1 x nW x heads x N x N: one copy per image of the windows' bias + mask
            bias = bias.expand(q.shape[0] // bias.shape[1], *bias.shape[1:]).reshape(q.shape[0], *bias.shape[2:])
        # Unshifted blocks pass the 1 x heads x N x N bias as it is (broadcast by SDPA): an expanded copy would be
        # materialised when the memory-efficient kernel pads the mask's last dimension, and kept for the backward.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                              dropout_p=self.attn_drop.p if self.training else 0.0,
                                              scale=self.scale)


class SwinVisionEncoder(nn.Module):
    """Swin transformer returning [mean patch token] + final patch tokens, as the reference's vision encoder."""

    def __init__(self, vision_config: dict, drop_path_rate: float = 0.1, grad_checkpointing: bool = False):
        super().__init__()
        config = load_vision_config(vision_config)
        self.image_res = config["image_res"]
        self.window_size = config["window_size"]
        self.width = config["vision_width"]
        self.num_patches = (self.image_res // (PATCH_SIZE * 2 ** (len(config["depths"]) - 1))) ** 2
        # timm's blocks already use one window and no shift when a stage is no larger than the window,
        # as the reference does (checked by the tests on the window/shift/mask of every block).
        swin = SwinTransformer(
            img_size=self.image_res, patch_size=PATCH_SIZE, in_chans=3, num_classes=0, global_pool="",
            embed_dim=config["embed_dim"], depths=tuple(config["depths"]), num_heads=tuple(config["num_heads"]),
            window_size=self.window_size, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, proj_drop_rate=0.0,
            attn_drop_rate=0.0, drop_path_rate=drop_path_rate, norm_layer=nn.LayerNorm,
        )
        # Keep only the trunk so our keys are timm's (patch_embed.*, layers.*, norm.*) with no head.
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        self.norm = swin.norm
        for module in self.layers.modules():
            if type(module) is WindowAttention:
                module.__class__ = _OnePassBiasWindowAttention
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's blocks in backward instead of storing their activations."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def patch_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Final-norm patch tokens, B x L x width."""
        x = self.norm(self.layers(self.patch_embed(image)))  # B x h x w x C (timm is channels-last)
        return x.flatten(1, 2)

    def forward(self, image: torch.Tensor, idx_to_group_img: Optional[torch.Tensor] = None,
                image_atts: Optional[torch.Tensor] = None):
        """B x (1+L) x width; in region mode a pair (region_embeds, full_embeds) with one row per idx entry."""
        if (idx_to_group_img is None) != (image_atts is None):
            raise ValueError("region mode needs both idx_to_group_img and image_atts (got only one)")
        if idx_to_group_img is None:
            self._check_image(image)
            return self._with_mean_token(self.patch_tokens(image))
        region, full = self.forward_regions(image, idx_to_group_img, image_atts)
        return region, full.index_select(0, idx_to_group_img)

    def forward_regions(self, image: torch.Tensor, idx_to_group_img: torch.Tensor, image_atts: torch.Tensor):
        """Region mode with each image's full sequence once: (region embeds, one row per idx entry;
        full embeds, one row per image)."""
        self._check_image(image)
        self._check_region_inputs(idx_to_group_img, image_atts, num_images=image.shape[0])
        patches = self.patch_tokens(image)
        # index_select, not patches[idx]: several texts share an image, and advanced indexing's backward adds the
        # repeated rows with atomics on multi-threaded CPUs (a varying order, so a non-deterministic gradient).
        region_patches = patches.index_select(0, idx_to_group_img)
        weights = image_atts[:, 1:].unsqueeze(2).to(region_patches.dtype)
        region_cls = (weights * region_patches).sum(dim=1) / weights.sum(dim=1)
        region = torch.cat([region_cls.unsqueeze(1), region_patches], dim=1)
        return region, self._with_mean_token(patches)

    @staticmethod
    def _with_mean_token(patches: torch.Tensor) -> torch.Tensor:
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)

    def _check_image(self, image: torch.Tensor) -> None:
        if image.dim() != 4 or tuple(image.shape[-2:]) != (self.image_res, self.image_res):
            raise ValueError(f"image must be B x 3 x {self.image_res} x {self.image_res}, got {tuple(image.shape)}")

    def _check_region_inputs(self, idx: torch.Tensor, atts: torch.Tensor, num_images: int) -> None:
        if idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx_to_group_img must be a 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}")
        if tuple(atts.shape) != (idx.shape[0], 1 + self.num_patches):
            raise ValueError(f"image_atts must be {idx.shape[0]} x {1 + self.num_patches} "
                             f"(one row per idx_to_group_img entry), got {tuple(atts.shape)}")
        if host_checkable(idx) and (int(idx.min()) < 0 or int(idx.max()) >= num_images):
            raise ValueError(f"idx_to_group_img values must lie in [0, {num_images}), "
                             f"got [{int(idx.min())}, {int(idx.max())}]")


def build_vision_encoder(config: dict, load_params: bool, drop_path_rate: float = 0.1,
                         ckpt_path: Optional[Union[str, Path]] = None) -> Tuple[SwinVisionEncoder, dict]:
    """Build the encoder; with load_params, load config['ckpt'] (or ckpt_path) and return the load report."""
    config = load_vision_config(config)
    encoder = SwinVisionEncoder(config, drop_path_rate=drop_path_rate)
    if not load_params:
        return encoder, {"path": None, "missing": [], "unexpected": []}
    path = ckpt_path or config.get("ckpt")
    if not path:
        raise ValueError("load_params=True but the vision config has no 'ckpt' and no ckpt_path was given")
    return encoder, load_official_swin(encoder, path)


# --------------------------------------------------------------------------------------------- bias tables

def interpolate_relative_position_bias_table(table: torch.Tensor, dst_rows: int) -> torch.Tensor:
    """Resize a ((2s-1)^2, heads) relative-position bias table to dst_rows rows as the reference does (BEiT)."""
    if table.dim() != 2:
        raise ValueError(f"relative_position_bias_table must be 2-D (rows, heads), got {tuple(table.shape)}")
    src_size = _square_side(table.shape[0], "source table rows")
    dst_size = _square_side(dst_rows, "dst_rows")
    if src_size == dst_size:
        return table
    if table.is_meta:
        return table.new_empty(dst_rows, table.shape[1])
    src_axis = _geometric_source_axis(src_size, dst_size)
    half = dst_size // 2
    dst_axis = np.arange(-half, half + 1, dtype=np.float64)
    values = table.detach().to("cpu", torch.float64).numpy()
    heads = []
    for head in range(values.shape[1]):
        grid = values[:, head].reshape(src_size, src_size)  # axis 0: row offset dy, axis 1: column offset dx
        spline = RectBivariateSpline(src_axis, src_axis, grid, kx=3, ky=3, s=0)
        heads.append(spline(dst_axis, dst_axis).reshape(-1))
    resized = torch.from_numpy(np.stack(heads, axis=1))
    return resized.to(device=table.device, dtype=table.dtype)


def _square_side(rows: int, what: str) -> int:
    side = math.isqrt(int(rows))
    if side * side != rows or side % 2 == 0:
        raise ValueError(f"{what} = {rows} is not (2w-1)^2 for an integer window w")
    return side


def _geometric_source_axis(src_size: int, dst_size: int) -> np.ndarray:
    """Source offsets spread geometrically so the outermost one lands near dst_size // 2."""
    steps, target = src_size // 2, dst_size // 2
    low, high = 1.01, 1.5
    while high - low > 1e-6:
        ratio = (low + high) / 2.0
        if _geometric_sum(ratio, steps) > target:
            high = ratio
        else:
            low = ratio
    # The reference uses the last midpoint tried, not either bound.
    offsets, position = [], 1.0
    for i in range(steps):
        offsets.append(position)
        position += ratio ** (i + 1)
    return np.array([-d for d in reversed(offsets)] + [0.0] + offsets, dtype=np.float64)


def _geometric_sum(ratio: float, terms: int) -> float:
    return (1.0 - ratio ** terms) / (1.0 - ratio)


# --------------------------------------------------------------------------------------------- key layouts

def swin_reference_to_ours(state_dict: Dict[str, torch.Tensor],
                           window_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Reference/official Swin keys (no `vision_encoder.` prefix) -> timm keys; drops buffers and head.*."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("vision_encoder."):
            raise ValueError(f"key {key!r}: strip the 'vision_encoder.' prefix before converting")
        if key.startswith("head.") or key.split(".")[-1] in _BUFFER_NAMES:
            continue
        if key.endswith(_TABLE_SUFFIX) and window_size is not None:
            value = interpolate_relative_position_bias_table(value, (2 * window_size - 1) ** 2)
        converted[_shift_downsample(key, +1)] = value
    return converted


def swin_ours_to_reference(state_dict: Dict[str, torch.Tensor],
                           encoder: Optional[SwinVisionEncoder] = None) -> Dict[str, torch.Tensor]:
    """timm keys -> reference keys; with `encoder`, adds its relative_position_index / attn_mask buffers too."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("layers.0.downsample."):
            raise ValueError(f"key {key!r}: stage 0 has no downsample in our layout; is this already the reference's?")
        converted[_shift_downsample(key, -1)] = value
    if encoder is not None:
        for key, buffer in encoder.named_buffers():
            if key.split(".")[-1] in _BUFFER_NAMES:
                converted[key] = buffer  # block buffers keep their names in both layouts
    return converted


def _shift_downsample(key: str, offset: int) -> str:
    match = _DOWNSAMPLE.match(key)
    if not match:
        return key
    return f"layers.{int(match.group(1)) + offset}.downsample." + key[match.end():]


def is_reference_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    """True for the official/reference layout: only it has a PatchMerging in stage 0."""
    return any(key.startswith("layers.0.downsample.") for key in state_dict)


# --------------------------------------------------------------------------------------------- loading

def load_official_swin(encoder: SwinVisionEncoder, path: Union[str, Path]) -> dict:
    """Load an official Swin `.pth` ({'model': sd}) or our own .pth/.safetensors; report missing/unexpected keys."""
    path = Path(path)
    state_dict = _read_state_dict(path)
    ignored_head = sorted(k for k in state_dict if k.startswith("head."))
    if is_reference_layout(state_dict):
        state_dict = swin_reference_to_ours(state_dict)
    else:
        state_dict = {k: v for k, v in state_dict.items()
                      if not k.startswith("head.") and k.split(".")[-1] not in _BUFFER_NAMES}
    own = encoder.state_dict()
    if not set(state_dict) & set(own):
        raise ValueError(f"{path}: none of its {len(state_dict)} keys is a Swin encoder key "
                         f"(first: {sorted(state_dict)[:3]}); a full CCLM checkpoint needs its prefix removed")
    state_dict = _fit_bias_tables(state_dict, own, path)
    _check_shapes(state_dict, own, path)
    result = encoder.load_state_dict(state_dict, strict=False)
    report = {"path": str(path), "missing": sorted(result.missing_keys),
              "unexpected": sorted(result.unexpected_keys) + ignored_head}
    if report["missing"] or report["unexpected"]:
        logger.warning("%s: missing keys %s; unexpected keys (ignored) %s", path, report["missing"],
                       report["unexpected"])
    return report


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"Swin checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: expected a state dict or {{'model': state dict}} of tensors")
    return loaded


def _fit_bias_tables(state_dict: dict, own: dict, path: Path) -> dict:
    """Resize every bias table to its block's size (each block's window is clamped to its stage size)."""
    fitted = dict(state_dict)
    for key, value in state_dict.items():
        if key.endswith(_TABLE_SUFFIX) and key in own and value.shape != own[key].shape:
            if value.shape[1] != own[key].shape[1]:
                raise ValueError(f"{path}: {key} has {value.shape[1]} heads, the encoder {own[key].shape[1]}")
            fitted[key] = interpolate_relative_position_bias_table(value, own[key].shape[0])
    return fitted


def _check_shapes(state_dict: dict, own: dict, path: Path) -> None:
    wrong = [f"{k}: file {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
             for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if wrong:
        more = f"\n  ... and {len(wrong) - 10} more" if len(wrong) > 10 else ""
        raise ValueError(f"{path}: shape mismatch in {len(wrong)} key(s) (is the vision config right?):\n  "
                         + "\n  ".join(wrong[:10]) + more)
