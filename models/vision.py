"""Swin-B vision encoder on timm's SwinTransformer, with the reference's output format.

Output: the final LayerNorm-ed patch tokens with their mean prepended as a "CLS" token (B x (1+L) x width).
Region mode (4M box objective): the first token becomes the mask-weighted mean of the patches.

Its checkpoint key layouts, bias-table interpolation and weight loading are in ``models.weights.swin``.
"""
import json
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, WindowAttention

from models.fast_ops import host_checkable, softmax_last_dim
from models.weights.swin import load_official_swin

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "vision"
REQUIRED_KEYS = ("image_res", "window_size", "embed_dim", "depths", "num_heads", "vision_width")
OPTIONAL_KEYS = ("ckpt",)
# The reference treats Swin as a ViT with patch size 32: 4-pixel patches, then three 2x merges.
PATCH_SIZE = 4


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
