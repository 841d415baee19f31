"""The task registry: every ``run.py --task`` name, its script, its configs and the flags it refuses.

This table is the one source of truth: ``run.py`` launches from it, each script reads its own entry (config schema,
which config keys ``--bs`` sets), and ``run.py --task NAME --help`` prints the entry's summary and data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

PRETRAIN_BATCH_KEYS = ("images.batch_size", "texts_para.batch_size", "regions.batch_size", "images_mono.batch_size")
PRETRAINING_REFUSES = {
    "evaluate": "pre-training has no evaluation; evaluate a fine-tuning task with --checkpoint "
                "<output_dir>/model_state_epoch_E.th",
    "fewshot": "few-shot runs fine-tune a downstream task",
    "gmt": "translate-test applies to xvnli, xflickrco and wit",
}


@dataclass(frozen=True)
class TaskInfo:
    """One task of ``run.py --task``."""

    name: str
    script: str                          # the task script, relative to the repository root
    config: str                          # default config
    schema: str                          # the base config whose keys are the only ones allowed
    summary: str                         # one line: what the task does
    data: str = ""                       # what it reads (shown by --help)
    fewshot_config: str | None = None    # default config with --fewshot
    bs_keys: tuple[str, ...] = ()        # config keys --bs sets (per-process batch = bs // processes)
    refuses: Mapping[str, str] = field(default_factory=dict)  # flag -> why the task cannot honour it

    def config_for(self, fewshot: bool) -> str:
        """The default config of a run (the few-shot one when ``--fewshot`` is given and the task has one)."""
        return self.fewshot_config if fewshot and self.fewshot_config else self.config


def _retrieval(name: str, script: str, config: str, fewshot: str | None, summary: str, data: str) -> TaskInfo:
    return TaskInfo(name, script, config, "configs/base/retrieval.yaml", summary, data, fewshot,
                    bs_keys=("batch_size_train",))


TASKS: dict[str, TaskInfo] = {t.name: t for t in (
    TaskInfo("pretrain_cclm_4m", "Pretrain.py", "configs/Pretrain_4m.yaml", "configs/base/pretrain.yaml",
             "CCLM pre-training with region boxes as well (the 4M setting)",
             "train_file, train_file_text, train_file_regions (boxes with region captions)",
             bs_keys=PRETRAIN_BATCH_KEYS, refuses=PRETRAINING_REFUSES),
    TaskInfo("pretrain_cclm_3m", "Pretrain.py", "configs/Pretrain_3m.yaml", "configs/base/pretrain.yaml",
             "CCLM pre-training on image-text pairs and parallel text (the 3M setting)",
             "train_file (image-caption shards), train_file_text (translation pairs)",
             bs_keys=PRETRAIN_BATCH_KEYS, refuses=PRETRAINING_REFUSES),
    _retrieval("itr_multi30k", "Retrieval.py", "configs/retrieval/multi30k_all.yaml",
               "configs/retrieval/multi30k_fewshot.yaml", "Multi30K image-text retrieval (en, de, fr, cs)",
               "data/finetune/multi30k/*.json, images/flickr30k-images/"),
    _retrieval("itr_coco", "Retrieval.py", "configs/retrieval/coco_all.yaml", "configs/retrieval/coco_fewshot.yaml",
               "MSCOCO image-text retrieval (en, ja, zh)", "data/finetune/mscoco/*.json, images/coco/"),
    _retrieval("xflickrco", "xFlickrCO.py", "configs/xflickrco/xflickrco.yaml",
               "configs/xflickrco/xflickrco_fewshot.yaml", "xFlickr&CO retrieval (IGLUE): train en, test 8 languages",
               "iglue/datasets/xFlickrCO/, images/flickr30k-images/, images/val2014/"),
    _retrieval("wit", "WIT.py", "configs/wit/wit.yaml", None, "WIT retrieval (IGLUE): train en, test 11 languages",
               "data/wit/annotations-bs64/ (or IGLUE's WIT files + the Kaggle pixel files, joined on first use)"),
    TaskInfo("xvnli", "XVNLI.py", "configs/xvnli/xvnli.yaml", "configs/base/xvnli.yaml",
             "XVNLI visual entailment (IGLUE): train en, test ar/es/fr/ru", "iglue/datasets/XVNLI/, "
             "images/flickr30k-images/", "configs/xvnli/xvnli_fewshot.yaml", bs_keys=("batch_size",)),
    TaskInfo("gqa", "GQA.py", "configs/gqa/gqa.yaml", "configs/base/gqa.yaml",
             "xGQA visual question answering (IGLUE): train en GQA, test 8 languages",
             "data/finetune/gqa/, iglue/datasets/xGQA/, images/gqa/", "configs/gqa/gqa_fewshot.yaml",
             bs_keys=("batch_size_train",)),
    TaskInfo("nlvr", "NLVR.py", "configs/nlvr/nlvr.yaml", "configs/base/nlvr.yaml",
             "NLVR2 -> MaRVL reasoning over image pairs (IGLUE): train en NLVR2, test id/sw/ta/tr/zh",
             "data/finetune/nlvr_en/, iglue/datasets/marvl/, images/nlvr2/, images/marvl-images/",
             "configs/nlvr/nlvr_fewshot.yaml", bs_keys=("batch_size",)),
    TaskInfo("nlvr_domain", "NLVR_pretrain.py", "configs/nlvr/nlvr_domain.yaml", "configs/base/nlvr_domain.yaml",
             "optional NLVR domain pre-training, then the nlvr task from its weights",
             "train_file (image-caption shards, pre-training's format), then nlvr's data",
             bs_keys=("images.batch_size",),
             refuses={"evaluate": "it has no evaluation of its own: evaluate the fine-tuned model with run.py --task "
                                  "nlvr --evaluate --checkpoint <output_dir>/nlvr_ft/checkpoint_best.pth",
                      "gmt": "NLVR2/MaRVL have no translate-test files"}),
    TaskInfo("reproduce", "Reproduce.py", "configs/reproduce/cclm_4m.yaml", "configs/base/reproduce.yaml",
             "the paper's zero-shot evaluations (IGLUE's five tasks, Multi30K, MSCOCO) from a checkpoint, our numbers "
             "beside the paper's", "every benchmark's data and the checkpoint: --dry-run-data lists them",
             refuses={flag: "it runs several benchmarks, each with the flags of its configs/reproduce entry"
                      for flag in ("bs", "epoch", "lr", "fewshot", "gmt", "resume", "output_hdfs")}),
    TaskInfo("demo", "Demo.py", "configs/tiny/demo.yaml", "configs/base/demo.yaml",
             "cross-lingual transfer on a synthetic world in a few minutes on a CPU",
             "nothing: it generates its data", bs_keys=("images.batch_size", "texts_para.batch_size"),
             refuses={flag: "the demo trains from scratch in a few minutes"
                      for flag in ("resume", "evaluate", "fewshot", "gmt", "checkpoint")}),
    TaskInfo("search", "Search.py", "configs/search.yaml", "configs/base/search.yaml",
             "image search with a model: index a folder of images, query it in any language, caption an image",
             "search.images (image folders), search.queries / search.captions (text files); usually run as "
             "python3 Search.py index|query|caption", bs_keys=("search.batch_size",),
             refuses={flag: "search uses a trained model as it is" for flag in ("resume", "evaluate", "fewshot", "gmt",
                                                                                  "epoch", "lr")}),
)}


def task_info(name: str) -> TaskInfo:
    """The registered task ``name`` (an unknown name is an error listing the known ones)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def tasks_of_script(script: str) -> list[TaskInfo]:
    """The tasks a script serves, in registry order (the first is its default)."""
    found = [info for info in TASKS.values() if info.script == script]
    if not found:
        raise KeyError(f"no task runs {script}")
    return found
