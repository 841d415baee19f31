"""An image index on disk: the features of a set of image files, their paths, and the identity of the model that made
them, kept in one folder as ``index.json`` (paths, sizes, modification times, the model) and a safetensors file of
the features that the json names.

Adding files to an index encodes only the files it does not hold yet (or whose size or time changed). Saving writes
a new features file next to the old one and then replaces ``index.json`` atomically, so a crash or an error at any
point leaves either the old index or the new one, never a mix; a folder of non-images, a corrupt image or a model
other than the index's never changes it.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from dataset.images import load_image
from utils.errors import UserError
from utils.results import write_text_atomically

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IDENTITY_KEYS = ("fingerprint", "embed_dim", "image_res")   # what must match for features to be comparable


class IndexFolderError(UserError):
    """An index folder that cannot be used as asked (absent, damaged, or made by another model)."""


@dataclass
class Scan:
    """The files found under the inputs: images to index, other files skipped (with why)."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason)


@dataclass
class IndexingReport:
    """What adding files to an index did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    encoded: int = 0                                                # images that went through the vision encoder
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


class ImageIndex:
    """Features (N x E float32), the files they come from, and the model that made them."""

    def __init__(self, folder: str | os.PathLike, identity: dict, features: torch.Tensor | None = None,
                 entries: list[dict] | None = None, features_file: str | None = None):
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.features = features if features is not None else torch.empty(0, int(identity["embed_dim"]))
        self.entries = list(entries or [])            # {"path", "size", "mtime_ns"}, row i of features
        self.features_file = features_file
        self._row = {entry["path"]: i for i, entry in enumerate(self.entries)}

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def paths(self) -> list[str]:
        return [entry["path"] for entry in self.entries]

    def row_of(self, path: str | os.PathLike) -> int | None:
        """The row of an indexed file (its absolute path), or None."""
        return self._row.get(str(Path(path).resolve()))

    # ------------------------------------------------------------------------------------------ files
    @staticmethod
    def exists(folder: str | os.PathLike) -> bool:
        return (Path(folder) / INDEX_FILE).is_file()

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ImageIndex":
        """The index saved in ``folder`` (a one-line error when it is absent or damaged)."""
        folder = Path(folder)
        meta_path = folder / INDEX_FILE
        if not meta_path.is_file():
            raise IndexFolderError(f"no image index in {folder} (no {INDEX_FILE}); build one with: Search.py index")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            features_path = folder / meta["features_file"]
            features = load_file(str(features_path))["features"]
        except SafetensorError as err:  # the library's message names no file
            raise IndexFolderError(f"{meta_path}: damaged index: its features file {features_path} cannot be read "
                                   f"({' '.join(str(err).split())})") from None
        except (OSError, ValueError, KeyError) as err:
            raise IndexFolderError(f"{meta_path}: damaged index ({' '.join(str(err).split())})") from None
        entries = meta.get("entries", [])
        if meta.get("format") != FORMAT_VERSION or features.shape[0] != len(entries):
            raise IndexFolderError(f"{meta_path}: damaged index ({features.shape[0]} features for {len(entries)} "
                                   f"files, format {meta.get('format')})")
        return cls(folder, meta["model"], features.float(), entries, meta["features_file"])

    def save(self) -> None:
        """Write the features to a new file, then point ``index.json`` at it (atomically), then drop the old file."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        old = self.features_file
        name = f"features-{uuid.uuid4().hex[:12]}.safetensors"
        save_file({"features": self.features.contiguous()}, str(self.folder / name),
                  metadata={"rows": str(len(self.entries)), "fingerprint": str(self.identity.get("fingerprint"))})
        meta = {"format": FORMAT_VERSION, "features_file": name, "model": self.identity, "count": len(self.entries),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "entries": self.entries}
        write_text_atomically(self.folder / INDEX_FILE, json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
        self.features_file = name
        if old and old != name:
            (self.folder / old).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ contents
    def check_model(self, identity: dict) -> None:
        """A one-line error unless ``identity`` (cclm.CCLM.identity) makes the same features as the index's model."""
        differ = [k for k in IDENTITY_KEYS if self.identity.get(k) != identity.get(k)]
        if differ:
            ours = ", ".join(f"{k} {self.identity.get(k)}" for k in differ)
            theirs = ", ".join(f"{k} {identity.get(k)}" for k in differ)
            raise IndexFolderError(f"the index in {self.folder} was built by another model "
                                   f"({self.identity.get('checkpoint')}, {ours}) than {identity.get('checkpoint')} "
                                   f"({theirs}); use another index folder, or the index's checkpoint")

    def is_current(self, path: Path, stat: os.stat_result) -> bool:
        """Whether ``path`` is indexed with its current size and modification time."""
        row = self._row.get(str(path))
        return row is not None and self.entries[row]["size"] == stat.st_size \
            and self.entries[row]["mtime_ns"] == stat.st_mtime_ns

    def put(self, files: Sequence[tuple[Path, os.stat_result]], features: torch.Tensor) -> tuple[int, int]:
        """Add or replace the rows of ``files``; returns (added, updated)."""
        added = updated = 0
        new_rows, new_entries = [], []
        features = features.float().cpu()
        for (path, stat), feat in zip(files, features):
            entry = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            row = self._row.get(str(path))
            if row is None:
                self._row[str(path)] = len(self.entries) + len(new_entries)
                new_entries.append(entry)
                new_rows.append(feat)
                added += 1
            else:
                self.entries[row] = entry
                self.features[row] = feat
                updated += 1
        if new_rows:
            self.features = torch.cat([self.features, torch.stack(new_rows)])
            self.entries.extend(new_entries)
        return added, updated

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, rows) of each query's ``k`` most similar images (cosine), both (Q, k), best first."""
        sims = queries.float().cpu() @ self.features.t()
        top = sims.topk(min(k, sims.shape[1]), dim=1)
        return top.values, top.indices


# ---------------------------------------------------------------------------------------------- finding images

def scan_images(inputs: Iterable[str | os.PathLike], files_from: str | os.PathLike | None = None,
                read_list: Callable[[Path], list[str]] | None = None) -> Scan:
    """The image files of ``inputs`` (folders, searched recursively, or files), in sorted order; other files are
    skipped with their reason. ``files_from``: only the files it lists (``read_list`` reads it), relative to the one
    input folder."""
    scan = Scan()
    inputs = [Path(p) for p in inputs]
    if files_from is not None:
        if len(inputs) != 1 or not inputs[0].is_dir():
            raise UserError(f"--files-from {files_from}: give exactly one images folder its paths are relative to")
        candidates = [inputs[0] / name for name in read_list(Path(files_from))]
    else:
        candidates = []
        for path in inputs:
            if path.is_dir():
                # hidden files and folders (.git, .DS_Store, editor swap files) are not looked at
                candidates += sorted(p for p in path.rglob("*") if p.is_file()
                                     and not any(part.startswith(".") for part in p.relative_to(path).parts))
            elif path.exists():
                candidates.append(path)
            else:
                raise UserError(f"{path}: no such file or folder")
    seen = set()
    for path in candidates:
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            scan.skipped.append((str(path), f"not an image file ({path.suffix or 'no extension'})"))
        else:
            scan.images.append(resolved)
    return scan


# ---------------------------------------------------------------------------------------------- indexing

class _ImageFiles(Dataset):
    """Decoded, transformed images; a file that cannot be read gives its reason instead."""

    def __init__(self, files: Sequence[Path], transform: Callable):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(load_image(self.files[i])), ""
        except (UserError, OSError, ValueError) as err:
            return i, None, " ".join(str(err).split())


def _collate(items):
    return items


def index_images(model, index: ImageIndex, files: Sequence[Path], batch_size: int = 32, num_workers: int = 0,
                 progress: bool = True, save_every_s: float = 300.0) -> IndexingReport:
    """Encode the ``files`` the index does not hold as they are now and add them; unreadable files are skipped and
    listed in the report. ``model`` is a :class:`cclm.CCLM` of the index's identity. The index is saved at the end
    (and every ``save_every_s`` seconds, so a long run that is stopped keeps most of its work)."""
    index.check_model(model.identity)
    report = IndexingReport()
    todo: list[tuple[Path, os.stat_result]] = []
    for path in files:
        try:
            stat = path.stat()
        except OSError as err:
            report.unreadable.append((str(path), " ".join(str(err).split())))
            continue
        if index.is_current(path, stat):
            report.unchanged += 1
        else:
            todo.append((path, stat))
    if not todo:
        return report
    loader = DataLoader(_ImageFiles([p for p, _ in todo], model.transform), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, total=len(loader), desc="indexing images", unit="batch", dynamic_ncols=True)
    last_save = time.monotonic()
    for items in loader:
        good = [(i, tensor) for i, tensor, _ in items if tensor is not None]
        report.unreadable += [(str(todo[i][0]), why) for i, tensor, why in items if tensor is None]
        if not good:
            continue
        feats = model.encode_images(torch.stack([t for _, t in good]), batch_size=batch_size, progress=False)
        report.encoded += len(good)
        added, updated = index.put([todo[i] for i, _ in good], feats)
        report.added += added
        report.updated += updated
        if time.monotonic() - last_save > save_every_s:
            index.save()
            last_save = time.monotonic()
    if report.added or report.updated:
        index.save()
    return report
