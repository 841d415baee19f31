"""Remote outputs (--output_hdfs): atomic uploads, checkpoint markers, the newest complete checkpoint, resume from the
remote copy when the local folder is gone; on a real local S3 server (moto) and on a file:// folder."""
import json
import os

import pytest
import torch

from utils import checkpoint as ckpt
from utils.remote import (MARKER_SUFFIX, OutputMirror, RemoteStorageError, output_mirror, sync_outputs,
                          upload_atomic, url_filesystem)

from tests.utils.toy_task import config, make_trainer


def test_file_system_upload_replaces_by_rename(tmp_path):
    """On a file system an upload is a temporary file renamed into place: a reader that opened the old file keeps
    reading it whole (an in-place write would truncate it under the reader), and no partial file stays behind."""
    remote = tmp_path / "remote"
    remote.mkdir()
    fs, root = url_filesystem(f"file://{remote}")
    (remote / "big.bin").write_bytes(b"old" * 100_000)
    new = tmp_path / "new.bin"
    new.write_bytes(b"new" * 200_000)
    with open(remote / "big.bin", "rb") as reader:
        upload_atomic(fs, new, f"{root}/big.bin")
        assert reader.read() == b"old" * 100_000
    assert (remote / "big.bin").read_bytes() == new.read_bytes()
    assert sorted(os.listdir(remote)) == ["big.bin"]


def test_unusable_urls_are_named():
    with pytest.raises(RemoteStorageError, match="hdfs://nowhere/out: no usable file system"):
        OutputMirror("hdfs://nowhere/out", "/tmp")
    with pytest.raises(RemoteStorageError, match="nosuchproto://x"):
        output_mirror("nosuchproto://x/y", "/tmp")


def local_run(folder, step_text="a"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.txt").write_text(f"log {step_text}\n")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / ".checkpoint_latest.pth.tmp123").write_bytes(b"half")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "preds.json").write_text("[]")
    torch.save({"step": step_text}, folder / ckpt.LATEST)


@pytest.mark.parametrize("remote_kind", ["s3", "file"])
def test_sync_uploads_changes_with_markers_and_keeps_the_previous_checkpoint(tmp_path, remote_kind, request):
    url = (request.getfixturevalue("s3_bucket") + "/run" if remote_kind == "s3" else f"file://{tmp_path}/remote")
    local = tmp_path / "out"
    local_run(local)
    mirror = OutputMirror(url, local)
    assert mirror.sync(step=5) == [ckpt.LATEST, "log.txt", "metrics.jsonl", "sub/preds.json"]
    assert mirror.sync(step=5) == []  # nothing changed
    fs, root = mirror.fs, mirror.root
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(root)) == sorted(
        [ckpt.LATEST, ckpt.LATEST + MARKER_SUFFIX, "log.txt", "metrics.jsonl", "preds.json"])
    marker = json.loads(fs.cat_file(f"{root}/{ckpt.LATEST}{MARKER_SUFFIX}"))
    assert marker["step"] == 5 and marker["bytes"] == (local / ckpt.LATEST).stat().st_size
    torch.save({"step": "b"}, local / ckpt.LATEST)
    (local / "log.txt").write_text("log a\nlog b\n")
    assert mirror.sync(step=9) == [ckpt.LATEST, "log.txt"]
    assert [(name, m["step"]) for name, m in mirror.complete_checkpoints()] == [(ckpt.LATEST, 9),
                                                                               ("checkpoint_previous.pth", 5)]
    # a crash between a checkpoint upload and its marker: that checkpoint is not complete, the previous one is
    torch.save({"step": "c", "pad": torch.zeros(100)}, local / "next.pth")
    fs.put_file(str(local / "next.pth"), f"{root}/{ckpt.LATEST}")
    assert [name for name, _ in mirror.complete_checkpoints()] == ["checkpoint_previous.pth"]
    fetched = tmp_path / "fetched.pth"
    assert mirror.fetch_newest_checkpoint(fetched)
    assert torch.load(fetched, weights_only=True) == {"step": "a"}


def test_a_corrupt_object_with_the_right_size_is_refused(tmp_path, s3_bucket):
    local = tmp_path / "out"
    local_run(local)
    mirror = OutputMirror(f"{s3_bucket}/run", local)
    mirror.sync(step=1)
    torch.save({"step": "b"}, local / ckpt.LATEST)
    mirror.sync(step=2)
    size = (local / ckpt.LATEST).stat().st_size
    mirror.fs.pipe_file(f"{mirror.root}/{ckpt.LATEST}", b"\0" * size)  # same size, other bytes
    target = tmp_path / "got.pth"
    assert mirror.fetch_newest_checkpoint(target)  # latest fails its SHA-256, previous is used
    assert torch.load(target, weights_only=True) == {"step": "a"}


def test_failed_uploads_are_retried_and_reported(tmp_path, local_s3, caplog):
    local = tmp_path / "out"
    local_run(local)
    bucket = f"later-{os.getpid()}"
    mirror = output_mirror(f"s3://{bucket}/run", local)
    assert mirror.sync(step=1) == []  # the bucket does not exist yet
    assert "could not upload" in caplog.text and set(mirror.failed) >= {"log.txt", ckpt.LATEST}
    with pytest.raises(RemoteStorageError, match=rf"--output_hdfs s3://{bucket}/run: could not upload .*log.txt"):
        sync_outputs(local)
    local_s3.make_bucket(bucket)
    sync_outputs(local)
    assert not mirror.failed and mirror.fs.exists(f"{bucket}/run/log.txt")


def test_resume_latest_from_the_remote_copy_equals_the_uninterrupted_run(tmp_path, s3_bucket):
    full = make_trainer(config(epochs=2), tmp_path / "full")
    full.fit()
    url = f"{s3_bucket}/part"
    first = make_trainer({**config(epochs=2, max_steps=8, ckpt_every_steps=4), "output_hdfs": url}, tmp_path / "part")
    first.fit()
    (tmp_path / "part" / "log.txt").write_text("first run\n")  # what setup_logging would have written
    first.remote.sync(step=8)
    remote_names = sorted(p.rsplit("/", 1)[1] for p in first.remote.fs.ls(first.remote.root))
    assert {ckpt.LATEST, ckpt.BEST, "metrics.jsonl", "log.txt", "checkpoint_previous.pth"} <= set(remote_names)
    for path in (tmp_path / "part").iterdir():  # the machine is gone: a new one starts with an empty folder
        path.unlink()
    (tmp_path / "part" / "log.txt").write_text("second run\n")
    resumed = make_trainer({**config(epochs=2), "output_hdfs": url}, tmp_path / "part")
    torch.manual_seed(1234)
    resumed.resume("latest")
    assert resumed.state.step == 8
    assert (tmp_path / "part" / "log.txt").read_text() == "first run\nsecond run\n"
    assert (tmp_path / "part" / "metrics.jsonl").is_file()
    resumed.fit()
    for key, value in full.raw_model.state_dict().items():
        torch.testing.assert_close(resumed.raw_model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    marker = json.loads(resumed.remote.fs.cat_file(f"{resumed.remote.root}/{ckpt.LATEST}{MARKER_SUFFIX}"))
    assert marker["step"] == 12


def test_resume_latest_without_any_checkpoint_names_both_places(tmp_path, s3_bucket):
    trainer = make_trainer({**config(epochs=1), "output_hdfs": f"{s3_bucket}/empty"}, tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        trainer.resume("latest")
