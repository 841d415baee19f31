"""Pre-training on webdataset tar shards served by a real local S3 server (moto), 2 gloo processes x 2 data-loader
workers: every sample once per pass (sample keys logged and checked), outputs mirrored to the server, and a run
killed (SIGKILL of the whole process tree) and resumed from the remote checkpoint on an empty disk ends with the
parameters of the uninterrupted run."""
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dataset.prepare import main as prepare
from utils.checkpoint import LATEST, load_training_state
from utils.remote import MARKER_SUFFIX, url_filesystem
from tasks.environment import resolve_data_root

from tests.processes import kill_process_tree

ROOT = Path(__file__).resolve().parents[2]
TINY_3M = str(ROOT / "configs/tiny/pretrain_cclm_3m.yaml")
SHARD_SIZE = 40


@pytest.fixture(scope="module")
def s3_world(local_s3):
    """The synthetic world's image-text records as tar shards (dataset.prepare) and its parallel text as jsonl, in a
    bucket of the local S3 server; returns (bucket URL, number of image-text samples)."""
    world = resolve_data_root({"synthetic": {"images": 200, "seed": 0}})
    bucket = local_s3.make_bucket(f"world-{os.getpid()}")
    shards = prepare(["tars", "--jsonl", str(world / "pretrain" / "image_text"), "--out", f"{bucket}/image_text",
                      "--shard-size", str(SHARD_SIZE)])
    fs, root = url_filesystem(bucket)
    for path in sorted((world / "pretrain" / "para_text").glob("*.jsonl")):
        fs.put_file(str(path), f"{root}/para_text/{path.name}")
    n = sum(1 for path in (world / "pretrain" / "image_text").glob("*.jsonl") for line in path.open() if line.strip())
    assert len(shards) == -(-n // SHARD_SIZE)
    return bucket, n


def command(bucket, n_samples, output_dir, output_url, *extra):
    last = -(-n_samples // SHARD_SIZE) - 1
    return [sys.executable, str(ROOT / "run.py"), "--task", "pretrain_cclm_3m", "--dist", "cpu:2", "--config", TINY_3M,
            "--output_dir", str(output_dir), "--output_hdfs", output_url, *extra, "--opts",
            f'train_file=["{bucket}/image_text/part-{{00000..{last:05d}}}.tar"]', f"train_file_text=[{bucket}/para_text/]",
            # 2 ranks x 8 per batch: 10 iterations per epoch; 2 epochs are two whole passes over the image shards
            "train_dataset_size=160", "schedular.epochs=2", "images.num_workers=2", "texts_para.num_workers=0",
            "sample_log=true", "run.progress=false", "run.log_every=1", "run.ckpt_every_steps=3"]


def run(cmd, timeout=300):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def uninterrupted(s3_world, tmp_path_factory):
    bucket, n = s3_world
    out = tmp_path_factory.mktemp("full")
    run(command(bucket, n, out, f"{bucket}/runs/full"))
    return out


def logged_passes(output_dir):
    """pass -> Counter of the sample ids logged by every rank and worker."""
    passes = collections.defaultdict(collections.Counter)
    for path in sorted((Path(output_dir) / "sample_log").glob("images-rank*-worker*.tsv")):
        for line in path.read_text().splitlines():
            epoch, sample = line.split("\t")
            passes[int(epoch)][sample] += 1
    return passes


def test_every_sample_once_per_pass_and_outputs_on_the_server(s3_world, uninterrupted):
    bucket, n = s3_world
    passes = logged_passes(uninterrupted)
    files = sorted(p.name for p in (uninterrupted / "sample_log").glob("images-*.tsv"))
    assert files == [f"images-rank{r}-worker{w}.tsv" for r in range(2) for w in range(2)]
    shards = [f"{bucket}/image_text/part-{i:05d}.tar" for i in range(-(-n // SHARD_SIZE))]
    expected = {f"{shards[i // SHARD_SIZE]}#{i:09d}" for i in range(n)}  # prepare numbers keys over all shards
    assert sorted(passes) == [0, 1]
    for epoch, counts in passes.items():
        assert set(counts) == expected and set(counts.values()) == {1}, epoch
    fs, root = url_filesystem(f"{bucket}/runs/full")
    names = {p.rsplit("/", 1)[1] for p in fs.find(root)}
    assert {"config.yaml", "log.txt", "metrics.jsonl", "results.json", "results.md", LATEST,
            LATEST + MARKER_SUFFIX, "checkpoint_previous.pth"} <= names
    assert json.loads(fs.cat_file(f"{root}/{LATEST}{MARKER_SUFFIX}"))["step"] == 20
    assert fs.cat_file(f"{root}/results.json") == (uninterrupted / "results.json").read_bytes()
    remote_log = fs.cat_file(f"{root}/log.txt").decode()  # up to the last upload (which logs one more line)
    assert (uninterrupted / "log.txt").read_text().startswith(remote_log) and "step 20 " in remote_log


def test_killed_and_resumed_from_the_remote_checkpoint_ends_as_the_uninterrupted_run(s3_world, uninterrupted,
                                                                                     tmp_path):
    bucket, n = s3_world
    out, url = tmp_path / "killed", f"{bucket}/runs/killed"
    fs, root = url_filesystem(url)
    marker = f"{root}/{LATEST}{MARKER_SUFFIX}"
    process = subprocess.Popen(command(bucket, n, out, url), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (fs.exists(marker) and json.loads(fs.cat_file(marker))["step"] >= 6):
            assert process.poll() is None and time.monotonic() < deadline, "no remote checkpoint at step 6"
            time.sleep(0.2)
    finally:
        kill_process_tree(process.pid)
    killed_at = json.loads(fs.cat_file(marker))["step"]
    assert killed_at < 20, "the run finished before it was killed"
    shutil.rmtree(out)  # a new machine: nothing local survives
    result = run(command(bucket, n, out, url, "--resume", "latest"))
    assert "fetched checkpoint_" in result.stdout + result.stderr
    a, b = load_training_state(uninterrupted / LATEST), load_training_state(out / LATEST)
    assert a["step"] == b["step"] == 20 and a["extra"] == b["extra"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    assert json.loads(fs.cat_file(marker))["step"] == 20


def test_tiny_config_on_the_synthetic_worlds_tar_shards(tmp_path):
    import Pretrain

    out = tmp_path / "tar"
    Pretrain.main(["--config", str(ROOT / "configs/tiny/pretrain_cclm_4m_tar.yaml"), "--output_dir", str(out),
                   "--opts", "run.max_steps=5", "run.progress=false", "run.log_every=1", "sample_log=true"])
    assert json.loads((out / "results.json").read_text())["languages"]["final"]["steps"] == 5  # 4 region steps, 1 image
    ids = [line.split("\t")[1] for path in (out / "sample_log").glob("*.tsv") for line in path.read_text().split("\n")
           if line]
    assert any("/pretrain/image_text_tar/part-" in i and "#" in i for i in ids)
    assert any("/pretrain/regions_tar/part-" in i and "#" in i for i in ids)
