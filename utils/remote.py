"""Remote storage through fsspec URLs (``s3://``, ``gs://``, ``hdfs://``, ``https://``, ``file://``, ...): the file
system of a URL for the data readers, and the mirror of a run's output folder (``--output_hdfs URL``).

Credentials and endpoints come from each file system's own settings: for S3 the AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible server) or ``~/.aws``; fsspec's
``FSSPEC_<PROTOCOL>_<OPTION>`` variables set any option of a file system (e.g. ``FSSPEC_S3_ENDPOINT_URL``).
``s3://`` works with the requirements; ``gs://`` needs ``gcsfs`` and ``hdfs://`` needs ``pyarrow`` (with Hadoop's
libraries), installed by those who use them.

The mirror (rank 0 only) uploads every file of the output folder that changed since its last upload: after each
checkpoint save, after each model snapshot and when the results are written.

* Atomic uploads: a reader of the remote folder never sees half a file. Object stores (s3, gs, az) make an object
  visible only once its PUT or multipart upload has completed, so the mirror uploads there directly. Other file
  systems (hdfs, local or mounted folders, sftp) show a file while it is written, so the mirror writes
  ``.<name>.partial-<random>`` in the same folder and renames it (an atomic rename on those systems).
* Complete checkpoints: after a checkpoint (``*.pth``, ``*.th``) the mirror writes its marker
  ``<name>.complete.json`` (bytes, SHA-256, training step). A checkpoint is complete when its marker matches it.
  S3 has no rename and ``checkpoint_latest.pth`` is overwritten at every save, so before that upload the server
  copies the current one and its marker to ``checkpoint_previous.pth`` (a server-side copy; no data goes through
  the trainer): a crash at any moment (mid-upload, between checkpoint and marker) leaves a complete checkpoint.
* ``--resume latest`` without a local ``checkpoint_latest.pth``: the complete remote training checkpoint with the
  highest step (latest, previous or ``checkpoint_step_N.pth``) is downloaded, its SHA-256 checked against the marker,
  and the run continues from it; files of the remote folder missing locally (metrics.jsonl, config, ...) come back
  too, and the remote ``log.txt`` is put in front of the new one.
* A failed upload is logged as an error and retried at the next sync; the sync when results are written raises if
  a file still could not be uploaded, so a run never ends believing its outputs are safe when they are not.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Iterator

from utils.dist import barrier
from utils.errors import UserError

logger = logging.getLogger(__name__)
# botocore logs an INFO line per S3 client ("Found credentials in environment variables"): not for log.txt
for _name in ("aiobotocore.credentials", "botocore.credentials", "botocore.configprovider"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Object stores: an object appears only when its upload completes, so a direct upload is atomic.
ATOMIC_PUT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"}
MARKER_SUFFIX = ".complete.json"
LATEST, PREVIOUS = "checkpoint_latest.pth", "checkpoint_previous.pth"
RESUME_CANDIDATE = re.compile(r"^checkpoint_(latest|previous|step_\d+)\.pth$")
APPENDED_LOGS = ("log.txt",)  # opened in append mode by the run: the remote part goes in front, in place


class RemoteStorageError(UserError, OSError):
    """A remote URL that cannot be used (no file system for it, missing package, unreachable); names the URL."""


def is_url(path) -> bool:
    """True for ``protocol://...`` strings (remote or ``file://``), False for plain local paths."""
    return bool(_SCHEME.match(str(path)))


def url_filesystem(url: str):
    """(fsspec file system, path within it) of ``url``; a clear error naming the URL when it cannot be served."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise RemoteStorageError(f"{url}: no usable file system for this URL ({exc})") from None


def protocol_of(fs) -> str:
    protocol = fs.protocol
    return protocol[0] if isinstance(protocol, (tuple, list)) else protocol


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload_atomic(fs, local: str | os.PathLike, remote_path: str) -> None:
    """Copy a local file to ``remote_path`` so that readers see the old object or the new one, never part of it."""
    if protocol_of(fs) in ATOMIC_PUT_PROTOCOLS:
        fs.put_file(str(local), remote_path)
        return
    parent, name = remote_path.rsplit("/", 1) if "/" in remote_path else ("", remote_path)
    partial = f"{parent}/.{name}.partial-{uuid.uuid4().hex[:12]}" if parent else f".{name}.partial"
    if parent:
        fs.makedirs(parent, exist_ok=True)
    try:
        fs.put_file(str(local), partial)
        fs.mv(partial, remote_path)
    except BaseException:
        if fs.exists(partial):
            fs.rm_file(partial)
        raise


def write_json_atomic(fs, obj: dict, remote_path: str, scratch: Path) -> None:
    """Upload a small JSON object atomically (through a local scratch file)."""
    scratch.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    try:
        upload_atomic(fs, scratch, remote_path)
    finally:
        scratch.unlink(missing_ok=True)


def download_atomic(fs, remote_path: str, local: Path) -> None:
    """Download to a temporary sibling of ``local`` and rename it into place."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.download{os.getpid()}")
    try:
        fs.get_file(remote_path, str(tmp))
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)


def is_checkpoint(name: str) -> bool:
    return name.endswith((".pth", ".th"))


def is_mirrored(relative: str) -> bool:
    """Files of the output folder that the mirror uploads: not hidden, not temporary, not markers."""
    parts = relative.split("/")
    return not any(p.startswith(".") for p in parts) and ".tmp" not in parts[-1] \
        and not parts[-1].endswith(MARKER_SUFFIX)


class OutputMirror:
    """Mirrors a local output folder to a remote URL (see the module doc); ``sync`` on rank 0 only."""

    def __init__(self, url: str, local_dir: str | os.PathLike):
        self.url = url.rstrip("/")
        self.local_dir = Path(local_dir)
        self.fs, self.root = url_filesystem(self.url)
        self.root = self.root.rstrip("/")
        self._uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) when uploaded
        self.failed: dict[str, str] = {}

    def remote_path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def local_files(self) -> Iterator[tuple[str, Path]]:
        if not self.local_dir.is_dir():
            return
        for path in sorted(self.local_dir.rglob("*")):
            relative = path.relative_to(self.local_dir).as_posix()
            if path.is_file() and is_mirrored(relative):
                yield relative, path

    # ---------------------------------------------------------------- uploads
    def sync(self, step: int | None = None, strict: bool = False) -> list[str]:
        """Upload every changed file (checkpoints with their markers); returns the relative paths uploaded.

        Failures are logged and retried at the next sync; with ``strict`` they raise once all files were tried.
        """
        uploaded = []
        for relative, path in self.local_files():
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._uploaded.get(relative) == signature:
                continue
            try:
                if is_checkpoint(relative):
                    self.publish_checkpoint(relative, path, step)
                else:
                    upload_atomic(self.fs, path, self.remote_path(relative))
            except Exception as exc:  # the local file is intact; the next sync tries again
                self.failed[relative] = f"{type(exc).__name__}: {exc}"
                logger.error("could not upload %s to %s (%s); retrying at the next sync", path,
                             self.remote_path(relative), self.failed[relative])
                continue
            self.failed.pop(relative, None)
            self._uploaded[relative] = signature
            uploaded.append(relative)
        if strict and self.failed:
            raise RemoteStorageError(f"--output_hdfs {self.url}: could not upload "
                                     + "; ".join(f"{k} ({v})" for k, v in self.failed.items())
                                     + f"; the files are intact in {self.local_dir}")
        if uploaded:
            logger.info("mirrored %d file(s) to %s: %s", len(uploaded), self.url, ", ".join(uploaded[:8]))
        return uploaded

    def publish_checkpoint(self, relative: str, path: Path, step: int | None) -> None:
        """Upload a checkpoint, then its marker (keeping the previous latest checkpoint while it is replaced)."""
        target = self.remote_path(relative)
        if relative == LATEST:
            self._keep_previous()
        marker = {"file": relative, "bytes": path.stat().st_size, "sha256": file_sha256(path), "step": step}
        upload_atomic(self.fs, path, target)
        write_json_atomic(self.fs, marker, target + MARKER_SUFFIX,
                          self.local_dir / f".{Path(relative).name}.marker{os.getpid()}")

    def _keep_previous(self) -> None:
        latest, previous = self.remote_path(LATEST), self.remote_path(PREVIOUS)
        if self.complete_marker(LATEST) is None:
            return  # nothing complete to keep (first save, or a crash left latest without its marker)
        self.fs.copy(latest, previous)
        self.fs.copy(latest + MARKER_SUFFIX, previous + MARKER_SUFFIX)

    # ---------------------------------------------------------------- finding and fetching checkpoints
    def complete_marker(self, relative: str) -> dict | None:
        """The marker of a remote checkpoint when it matches the object's size, else None."""
        target = self.remote_path(relative)
        try:
            marker = json.loads(self.fs.cat_file(target + MARKER_SUFFIX))
            size = self.fs.size(target)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(marker, dict) or marker.get("bytes") != size or not marker.get("sha256"):
            return None
        return marker

    def complete_checkpoints(self) -> list[tuple[str, dict]]:
        """(relative name, marker) of the complete remote training checkpoints, newest (highest step) first."""
        try:
            names = [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if RESUME_CANDIDATE.match(name):
                marker = self.complete_marker(name)
                if marker is not None:
                    found.append((name, marker))
        rank = {LATEST: 2, PREVIOUS: 0}
        found.sort(key=lambda item: (item[1].get("step") or -1, rank.get(item[0], 1)), reverse=True)
        return found

    def fetch_newest_checkpoint(self, local: Path) -> bool:
        """Download the newest complete remote checkpoint to ``local`` (SHA-256 checked); False when none is."""
        for name, marker in self.complete_checkpoints():
            download_atomic(self.fs, self.remote_path(name), local)
            if file_sha256(local) == marker["sha256"]:
                logger.info("fetched %s (step %s) from %s to %s", name, marker.get("step"), self.url, local)
                return True
            logger.warning("%s/%s does not match its marker's SHA-256; trying an older checkpoint", self.url, name)
            local.unlink()
        return False

    def restore_missing_files(self) -> None:
        """Download remote files absent locally; the remote part of an appended log goes in front of the local one."""
        try:
            remote = self.fs.find(self.root)
        except FileNotFoundError:
            return
        for path in remote:
            relative = path[len(self.root) + 1:]
            if not is_mirrored(relative) or is_checkpoint(relative):
                continue
            local = self.local_dir / relative
            if not local.exists():
                download_atomic(self.fs, path, local)
            elif relative in APPENDED_LOGS:
                prepend_in_place(local, self.fs.cat_file(path))

    def fetch_latest_if_absent(self, local: Path, is_main: bool) -> None:
        """``--resume latest`` with this mirror: when ``local`` is absent, rank 0 fetches the newest complete remote
        checkpoint (and the folder's other files); a rank that still lacks it then (no shared disk) fetches its own."""
        fetched = False
        if is_main and not local.is_file():
            fetched = self.fetch_newest_checkpoint(local)
            if fetched:
                self.restore_missing_files()
            else:
                logger.warning("--resume latest: no local %s and no complete checkpoint under %s", local, self.url)
        barrier()
        if not is_main and not local.is_file():
            self.fetch_newest_checkpoint(local)


def prepend_in_place(path: Path, head: bytes) -> None:
    """Put ``head`` in front of the file's content without replacing the file (open append handles stay valid)."""
    with open(path, "r+b") as f:
        tail = f.read()
        f.seek(0)
        f.write(head if head.endswith(b"\n") or not head else head + b"\n")
        f.write(tail)
        f.truncate()


_MIRRORS: dict[Path, OutputMirror] = {}


def output_mirror(url: str | None, local_dir: str | os.PathLike) -> OutputMirror | None:
    """The mirror of ``local_dir`` to ``url`` (one per folder, kept for :func:`sync_outputs`); None without a URL."""
    if not url:
        return None
    key = Path(local_dir).resolve()
    mirror = _MIRRORS.get(key)
    if mirror is None or mirror.url != str(url).rstrip("/"):
        mirror = _MIRRORS[key] = OutputMirror(str(url), local_dir)
    return mirror


def sync_outputs(local_dir: str | os.PathLike) -> None:
    """Upload what changed in ``local_dir`` if it is mirrored (a no-op otherwise); raises if an upload fails."""
    mirror = _MIRRORS.get(Path(local_dir).resolve())
    if mirror is not None:
        mirror.sync(strict=True)

