"""README "Adding a benchmark": a new retrieval benchmark is one config plus a short script, run here end to end on
the synthetic world (the script below is the README's example)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = '''#!/usr/bin/env python3
"""Image-text retrieval on my data: captions json (the Multi30K / MSCOCO format), several languages."""
from __future__ import annotations

from pathlib import Path

from tasks.registry import TaskInfo
from tasks.retrieval import RetrievalTask
from tasks.retrieval_data import RetrievalData, load_standard_data
from tasks.runner import run_script, run_task

INFO = TaskInfo("itr_mine", "MyRetrieval.py", "configs/my_retrieval.yaml", "configs/base/retrieval.yaml",
                "image-text retrieval on my data", bs_keys=("batch_size_train",))


def load_data(config: dict, root: Path) -> RetrievalData:
    """Train on train_file; evaluate val_file and test_file per language."""
    return load_standard_data("caption_json", config, root)


TASK = RetrievalTask("My retrieval benchmark", load_data, iglue=False)


def main(argv=None) -> dict:
    """Run with command-line flags ``argv``; returns the results.json payload."""
    return run_task(TASK, INFO, argv)


if __name__ == "__main__":
    run_script(main)
'''

CONFIG = f'''base: {ROOT}/configs/tiny/itr_coco.yaml   # in the repository: base: base/retrieval.yaml
train_file: [data/finetune/mscoco/en.train.json]
val_file: {{en: data/finetune/mscoco/en.valid.json}}
test_file: data/finetune/mscoco/{{lang}}.1k_test.json
val_languages: [en]
test_languages: [en, de, ja]
selection: {{split: val, languages: [en]}}
schedular: {{epochs: 1}}
'''


def test_a_new_retrieval_benchmark_is_a_config_and_a_short_script(tmp_path):
    assert len(SCRIPT.splitlines()) <= 40
    script, config = tmp_path / "MyRetrieval.py", tmp_path / "my_retrieval.yaml"
    script.write_text(SCRIPT, encoding="utf-8")
    config.write_text(CONFIG, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("my_retrieval_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    payload = module.main(["--config", str(config), "--output_dir", str(out), "--opts", "run.max_steps=3"])
    assert list(payload["languages"]) == ["en", "de", "ja"] and payload["extra"]["task"] == "itr_mine"
    assert payload["iglue_avg"] == {} and payload["extra"]["steps"] == 3
    on_disk = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert on_disk["languages"] == payload["languages"] and (out / "results.md").is_file()
    assert "| de |" in (out / "results.md").read_text(encoding="utf-8")
