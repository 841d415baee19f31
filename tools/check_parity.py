"""Compare our CCLM pre-training model with the reference on a golden fixture folder.

    python3 tools/check_parity.py GOLDEN_DIR [--attn sdpa|eager]

The folder holds (docs/model.md#golden-fixture): one ``*.yaml`` model config (relative paths resolve against the
folder), ``tiny_state.pt`` (reference-layout weights), ``tiny_inputs.pt`` (forward kwargs per batch),
``tiny_losses.json`` (eval losses and the hard-negative draws per batch), ``tiny_outputs.pt`` (intermediate
tensors, ``<batch>.<name>``) and ``tiny_grads.pt`` (gradients of each batch's summed losses, reference parameter
names). The model is built from the config, loaded through our checkpoint conversion and run in eval mode with the
recorded hard negatives.
Every loss, tensor and gradient is printed beside the reference's; the exit status is 1 on any miss.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.golden import build_golden_model, check_golden_folder, golden_inputs, read_golden_file  # noqa: E402
from models.losses import HardNegatives  # noqa: E402
from models.weights.pretrain import reference_to_ours  # noqa: E402

# The tolerances allow float32 rounding on another CPU, not a different computation. The golden values were made on
# one CPU; fp32 kernels of other CPUs (AVX2, AVX-512, AMX) block their sums differently. The most sensitive value is
# the text-text contrastive loss (its logits are similarities divided by a small temperature): the golden
# fp32 loss_ttc is 2.3e-5 (relative) from the same computation in float64, and the gradient of ``temp`` (a sum of
# nearly cancelling terms) moves by up to 3e-3 of its norm between CPUs. Any real difference of computation shows up
# orders of magnitude above these (a wrong mask, scale or sign moves losses by 1e-2 or more).
LOSS_RTOL = 5e-5      # |ours - ref| <= LOSS_RTOL * |ref|
TENSOR_ATOL = 1e-5    # max |ours - ref| <= TENSOR_ATOL
GRAD_RTOL = 5e-3      # ||ours - ref|| <= GRAD_RTOL * ||ref||


@dataclass
class Tally:
    """Pass/total counts per kind of check."""

    passed: int = 0
    total: int = 0

    def add(self, ok: bool) -> bool:
        self.total += 1
        self.passed += int(ok)
        return ok

    def __str__(self) -> str:
        return f"{self.passed}/{self.total}"


def _report(ok: bool, label: str, ours: str, ref: str, err: str) -> None:
    print(f"[{'PASS' if ok else 'FAIL'}] {label:<72} ours={ours:<14} ref={ref:<14} {err}")


def reference_param_name_to_ours(name: str, window_size: int) -> str:
    """Map one reference parameter name to ours through the checkpoint conversion."""
    mapped = reference_to_ours({name: torch.zeros(1)} if "relative_position_bias_table" not in name
                               else {name: torch.zeros((2 * window_size - 1) ** 2, 1)})
    if len(mapped) != 1:
        raise KeyError(f"reference parameter {name!r} maps to {sorted(mapped)} (expected one name)")
    return next(iter(mapped))


def intermediate_tensors(model, inputs: dict) -> dict[str, torch.Tensor]:
    """The tensors tiny_outputs.pt records for an image-caption batch, computed by our model's public methods."""
    with torch.no_grad():
        image_embeds, image_atts = model.get_vision_embeds(inputs["image"])
        text_embeds = model.get_text_embeds(inputs["text_ids"], inputs["text_atts"])
        image_feat, text_feat = model.get_features(image_embeds, text_embeds)
        cross = model.get_cross_embeds(image_embeds, image_atts, text_embeds=text_embeds,
                                       text_atts=inputs["text_atts"])
    return {"image_embeds": image_embeds, "text_embeds": text_embeds, "image_feat": image_feat,
            "text_feat": text_feat, "cross_cls": cross[:, 0], "temp": model.temp.detach().clone()}


def check_losses(batch: str, losses: dict, expected: dict, tally: Tally) -> None:
    for name in sorted(set(expected) | set(losses)):
        if name not in losses or name not in expected:
            _report(tally.add(False), f"{batch}.{name}", "absent" if name not in losses else "present",
                    "absent" if name not in expected else "present", "loss set differs")
            continue
        ours, ref = float(losses[name].detach()), float(expected[name])
        rel = abs(ours - ref) / max(abs(ref), 1e-12)
        _report(tally.add(rel <= LOSS_RTOL), f"{batch}.{name}", f"{ours:.7f}", f"{ref:.7f}", f"rel={rel:.2e}")


def check_grads(batch: str, model, ref_grads: dict, tally: Tally) -> None:
    params = dict(model.state_dict(keep_vars=True))
    for ref_name, ref_grad in ref_grads.items():
        label = f"{batch}.grad.{ref_name}"
        ours_name = reference_param_name_to_ours(ref_name, model.vision_encoder.window_size)
        param = params.get(ours_name)
        grad = None if param is None else param.grad
        if grad is None or grad.shape != ref_grad.shape:
            why = "no such parameter" if param is None else "no gradient" if grad is None else \
                f"shape {tuple(grad.shape)} vs {tuple(ref_grad.shape)}"
            _report(tally.add(False), label, "-", f"{float(ref_grad.norm()):.6g}", why)
            continue
        ref_norm = float(ref_grad.norm())
        diff = float((grad - ref_grad).norm())
        ok = diff <= GRAD_RTOL * ref_norm
        _report(tally.add(ok), label, f"{float(grad.norm()):.6g}", f"{ref_norm:.6g}",
                f"|diff|={diff:.2e} ({diff / max(ref_norm, 1e-30):.1e} of ref)")


def check_tensors(batch: str, ours: dict, ref_outputs: dict, tally: Tally) -> None:
    for key, ref in ref_outputs.items():
        if not key.startswith(batch + "."):
            continue
        name = key[len(batch) + 1:]
        if name not in ours:
            _report(tally.add(False), key, "-", "-", "no recipe for this tensor")
            continue
        mine = ours[name]
        if mine.shape != ref.shape:
            _report(tally.add(False), key, str(tuple(mine.shape)), str(tuple(ref.shape)), "shape differs")
            continue
        err = float((mine - ref).abs().max()) if ref.numel() else 0.0
        _report(tally.add(err <= TENSOR_ATOL), key, f"|.|={float(mine.norm()):.6g}", f"{float(ref.norm()):.6g}",
                f"max abs diff={err:.2e}")


def run_parity(golden: Path, attn_implementation: str = "sdpa") -> dict[str, Tally]:
    """Run every check of a golden folder; returns the tallies for losses, tensors and gradients."""
    check_golden_folder(golden)
    torch.manual_seed(0)
    model = build_golden_model(golden, attn_implementation)
    inputs, expected = golden_inputs(golden), read_golden_file(golden / "tiny_losses.json")
    ref_outputs, ref_grads = read_golden_file(golden / "tiny_outputs.pt"), read_golden_file(golden / "tiny_grads.pt")
    tallies = {"losses": Tally(), "tensors": Tally(), "grads": Tally()}
    for batch, kwargs in inputs.items():
        if batch not in expected.get("eval", {}):
            raise KeyError(f"tiny_losses.json has no eval entry for batch {batch!r}")
        record = expected["eval"][batch]
        negatives = HardNegatives.from_draws(record["multinomial_draws"])
        model.zero_grad(set_to_none=True)
        losses = model(**kwargs, hard_negatives=negatives)
        check_losses(batch, losses, record["losses"], tallies["losses"])
        sum(losses.values()).backward()
        check_grads(batch, model, ref_grads.get(batch, {}), tallies["grads"])
        if any(k.startswith(batch + ".") for k in ref_outputs):
            check_tensors(batch, intermediate_tensors(model, kwargs), ref_outputs, tallies["tensors"])
    return tallies


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 when every check passes, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("golden_dir", type=Path, help="folder in the golden format (e.g. cclm-tiny-ref)")
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa",
                        help="text attention kernel (eager reproduces the reference bit for bit on CPU)")
    args = parser.parse_args(argv)
    tallies = run_parity(args.golden_dir, args.attn)
    summary = ", ".join(f"{name} {tally}" for name, tally in tallies.items())
    ok = all(t.passed == t.total for t in tallies.values())
    print(f"{'PARITY OK' if ok else 'PARITY FAILED'}: {summary}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
