"""Files that appear whole (utils/atomic.py): the temporary sibling, the failure that removes it and names the file,
and the leftovers an interrupted run left, removed at the next start."""
import errno

import pytest

from utils.atomic import atomic_write, os_error_in, remove_leftover_temp_files, write_text_atomically
from utils.errors import DiskError


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "results.json"
    write_text_atomically(path, "old")
    write_text_atomically(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_disk_failure_is_a_user_error_naming_the_file_and_the_temporary_file_goes(tmp_path):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(b"previous")

    def fails_midway(f):
        f.write(b"half")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("the library's own wording of the failed write")

    with pytest.raises(DiskError) as info:
        atomic_write(path, fails_midway)
    assert str(info.value).startswith(f"cannot write {path}: No space left on device (the disk is full")
    assert f"{path} is as it was before this write" in str(info.value)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_other_failures_keep_their_type_and_still_remove_the_temporary_file(tmp_path):
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "x", lambda f: 1 / 0)
    assert list(tmp_path.iterdir()) == []


def test_the_os_error_behind_a_library_error_is_found():
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("enforce fail")
    except RuntimeError as e:
        assert os_error_in(e).errno == errno.EFBIG
    assert os_error_in(ValueError("x")) is None


def test_leftovers_are_removed_but_not_in_another_runs_folder(tmp_path):
    names = [".checkpoint_latest.pth.tmp1234", ".results.json.tmp77", ".checkpoint_latest.pth.download55",
             "predictions/.test_en.json.tmp9"]
    kept = ["checkpoint_latest.pth", ".cclm-run.lock", "tmp.txt", ".hidden", "nlvr_ft/.checkpoint_latest.pth.tmp3"]
    (tmp_path / "predictions").mkdir()
    (tmp_path / "nlvr_ft").mkdir()
    (tmp_path / "nlvr_ft" / "config.yaml").write_text("{}")  # another run's folder: its own run cleans it
    for name in names + kept:
        (tmp_path / name).write_text("x")
    removed = remove_leftover_temp_files(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == sorted(names)
    assert all((tmp_path / name).exists() for name in kept)
