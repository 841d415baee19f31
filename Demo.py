#!/usr/bin/env python3
"""The embedded demo: cross-lingual transfer you can watch on a 2-core CPU, without GPUs, weights or downloads.

1. A synthetic world is generated (cached under ``cache/``): training scenes with English captions only, en<->X
   translation pairs for the other languages, and held-out scenes captioned in every language, whose contents never
   occur in a training file nor in the tokenizer's text.
2. A tiny CCLM (our ``CCLMPretrain``) is pre-trained with the CCLM objectives that carry the transfer: image-text
   contrastive (ITC) on the English captions and text-text contrastive (TTC) on the translation pairs, both in one
   update per step; the matching head (ITM, hard negatives) joins for the last part of training.
3. Zero-shot retrieval is measured in every language on the held-out scenes, by contrastive similarity and after
   re-ranking the top ``demo.k_test`` candidates with the matching head.
4. With ``demo.ablation`` the same budget (same steps and image-text batches) is trained again without parallel text.

Images are not augmented: every caption states where its objects are, so flips and crops would change its meaning.
Run: ``python3 run.py --task demo`` (``--opts demo.parallel_text=false`` trains the ablation arm alone).
"""
from __future__ import annotations

from tasks.demo import DemoTask
from tasks.runner import run_script, run_task

TASK = DemoTask()


def main(argv=None) -> dict:
    """Run the demo with command-line flags ``argv``; returns the results.json payload."""
    return run_task(TASK, "Demo.py", argv)


if __name__ == "__main__":
    run_script(main)
