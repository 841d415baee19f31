"""Data locations: brace patterns, folders, local paths and URLs (S3 on a local moto server, HTTP on a local server)."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataset.sources import expand_braces, file_size, list_data_files, open_binary, read_many
from tests.processes import free_port
from utils.remote import url_filesystem


def test_brace_patterns_keep_zero_padding():
    assert expand_braces("s3://b/shards-{00008..00011}.tar") == [
        "s3://b/shards-00008.tar", "s3://b/shards-00009.tar", "s3://b/shards-00010.tar", "s3://b/shards-00011.tar"]
    assert expand_braces("a-{x,y}.jsonl") == ["a-x.jsonl", "a-y.jsonl"] and expand_braces("plain") == ["plain"]


def test_local_files_folders_and_patterns(tmp_path):
    for name in ("p-0.tar", "p-1.tar", "p-2.tar", "p-0.jsonl", ".hidden.tar", "_tmp.tar"):
        (tmp_path / name).write_bytes(b"x")
    assert list_data_files(tmp_path, ".tar") == [tmp_path / "p-0.tar", tmp_path / "p-1.tar", tmp_path / "p-2.tar"]
    assert list_data_files([str(tmp_path / "p-{2..1}.tar"), tmp_path / "p-0.jsonl"], ".tar") == [
        tmp_path / "p-0.jsonl", tmp_path / "p-1.tar", tmp_path / "p-2.tar"]
    with pytest.raises(FileNotFoundError, match=r"p-3.tar: no such file"):
        list_data_files(str(tmp_path / "p-{0..3}.tar"), ".tar")
    with pytest.raises(FileNotFoundError, match="holds no .csv"):
        list_data_files(tmp_path, ".csv")


def test_s3_objects_folders_sizes_and_seeks(s3_bucket):
    fs, root = url_filesystem(s3_bucket)
    fs.pipe({f"{root}/d/a.jsonl": b"line one\nline two\n", f"{root}/d/b.jsonl": b"{}\n", f"{root}/d/n.txt": b"-"})
    assert list_data_files(f"{s3_bucket}/d/", ".jsonl") == [f"{s3_bucket}/d/a.jsonl", f"{s3_bucket}/d/b.jsonl"]
    assert list_data_files(f"{s3_bucket}/d/{{a,b}}.jsonl", ".jsonl")[1] == f"{s3_bucket}/d/b.jsonl"
    assert file_size(f"{s3_bucket}/d/a.jsonl") == 18
    with open_binary(f"{s3_bucket}/d/a.jsonl") as f:
        f.seek(9)
        assert f.readline() == b"line two\n"
    got = read_many([f"{s3_bucket}/d/b.jsonl", f"{s3_bucket}/d/missing.json"])
    assert got == {f"{s3_bucket}/d/b.jsonl": b"{}\n", f"{s3_bucket}/d/missing.json": None}


def test_http_server_files_and_listing(tmp_path):
    (tmp_path / "web").mkdir()
    for name in ("s-0.tar", "s-1.tar", "index.txt"):
        (tmp_path / "web" / name).write_bytes(name.encode())
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(tmp_path / "web")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                file_size(f"{base}/s-0.tar")
                break
            except OSError:
                time.sleep(0.1)
        assert list_data_files(f"{base}/", ".tar") == [f"{base}/s-0.tar", f"{base}/s-1.tar"]
        assert list_data_files(f"{base}/s-{{0..1}}.tar", ".tar")[1] == f"{base}/s-1.tar"
        with open_binary(f"{base}/s-1.tar") as f:
            assert f.read() == b"s-1.tar"
        local = str(Path(tmp_path / "web" / "index.txt"))
        assert read_many([f"{base}/s-0.tar", local]) == {f"{base}/s-0.tar": b"s-0.tar", local: b"index.txt"}
    finally:
        server.terminate()
        server.wait(timeout=10)
