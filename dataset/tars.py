"""Pre-training samples from webdataset tar shards (img2dataset's layout), local or remote (fsspec URLs, brace
patterns: dataset.sources), with the guarantees of the jsonl streams of dataset.shards: every sample exactly once per
pass over ranks x DataLoader workers, an order drawn from (seed, epoch), an exact resume position, and bad samples
skipped with a count (``skip_bad_samples``, ``max_bad_fraction``) or named by shard URL and member.

Shard layout (docs/data-formats.md#webdataset-tar-shards)
  A sample is a run of consecutive members sharing a key (the name up to its first dot, as webdataset groups them):
  ``<key>.jpg`` (or another of ``image_ext``: jpeg, png, webp), ``<key>.txt`` (a caption) and/or ``<key>.json`` (an
  object). The record handed to the source's processor (dataset.pretrain) is the json object plus the image bytes
  under ``image_key``, and, when the json has no ``caption_key`` field, the .txt text under ``caption_key``. So
  multilingual captions are a json field (``{"caption": {"en": "...", "de": "..."}}``, or whichever field
  ``caption_key`` names), a plain caption can be the .txt, and a region sample puts ``elems`` (boxes with captions)
  and an optional whole-image caption in its json.

Sample counts
  The split needs each shard's number of samples before reading it. It comes from ``<name>_stats.json`` next to
  ``<name>.tar`` (its ``successes``: img2dataset writes these files, and so does ``python3 -m dataset.prepare``); a
  shard without one is read once at start-up to count its samples (split over the ranks; a warning names how many),
  so write them beforehand for large remote data (``python3 -m dataset.prepare stats URL...``). Reading checks the
  count: a shard that ends early (a truncated tar) turns the sample it was in and the missing ones into bad
  samples; a shard with more samples than its count is an error (a stale _stats.json).

How a pass is split (by sample counts, so it balances whatever the number of shards)
  The shards are put in an order drawn from (seed, epoch) and seen as one stream of N samples. Rank r of R takes the
  samples [N*r//R, N*(r+1)//R); its n samples are cut into W contiguous pieces, one per worker role, the first
  n % W pieces one sample longer. Ranks and roles therefore differ by at most one sample whether or not the shard
  count divides R x W (10 shards of 1000 samples on 3 ranks x 2 workers: every role reads 1666 or 1667 samples, two
  of them across a shard boundary), and the highest roles run out first, as dataset.shards's resume rule needs.
  The price of cutting inside shards: a role whose piece starts inside a shard reads (downloads, does not decode)
  the samples before its start, and stops reading at its end; at most one extra partial shard per role and pass
  (with fewer shards than R x W roles, several roles read the same shard's beginning).
  Within a role, samples keep stream order, or go through a ``shuffle_buffer`` seeded by (seed, epoch, rank, role).

Batches, the top-up of a role's last batch, resume and bad-sample counting are dataset.shards's ShardedJsonlDataset
fed by :class:`ShardedTars`; a sample's randomness is seeded by (seed, source, pass, shard index, sample index in the
shard). A resumed role knows where its consumed samples end (the counts), so it reads only its pass's first batch
(the top-up pool) and starts reading at the shard that holds its next sample; with a ``shuffle_buffer`` it reads the
consumed samples raw (the buffer's output depends on all of them).
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from webdataset import TarWriter
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from dataset.jsondoc import parse_json_line
from dataset.shards import BadDataError, BadRecordError, ShardedSource, file_order, ranges_between
from dataset.sources import DataPath, list_data_files, open_binary, read_many
from utils.dist import all_gather_object, is_dist

logger = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# What a cut-off or damaged tar raises while it is read (anything else, e.g. a network failure, propagates).
TRUNCATION_ERRORS = (tarfile.TarError, EOFError, zlib.error)


def is_tar_shard(path) -> bool:
    return str(path).endswith(TAR_SUFFIXES)


def stats_path(shard: DataPath) -> str:
    """``.../00012.tar`` -> ``.../00012_stats.json`` (img2dataset's per-shard statistics file)."""
    text = str(shard)
    for suffix in TAR_SUFFIXES:
        if text.endswith(suffix):
            return text[:-len(suffix)] + "_stats.json"
    raise ValueError(f"{shard}: not a tar shard (expected {', '.join(TAR_SUFFIXES)})")


def stats_json(count: int) -> str:
    """The content of a shard's _stats.json: img2dataset's ``count`` and ``successes`` fields (all samples kept)."""
    return json.dumps({"count": count, "successes": count}) + "\n"


def write_stats_file(shard: Path, count: int) -> Path:
    """Write ``shard``'s _stats.json (temporary file, then rename); returns its path."""
    path = Path(stats_path(shard))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(stats_json(count), encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class TarLayout:
    """How a sample's members become a record (see the module doc)."""

    image_exts: tuple[str, ...] = IMAGE_EXTS
    image_key: str = "binary"
    caption_key: str = "caption"
    caption_required: bool = True   # False for regions (their whole-image caption is optional)


@dataclass(frozen=True)
class MemberRef:
    """Where a sample lives: its shard (``path``), the shard's index in the sorted list, the sample's index in the
    shard (``offset``, which seeds its randomness) and the member that messages name."""

    path: str
    file_index: int
    offset: int
    member: str

    def __str__(self) -> str:
        return f"{self.path}, member {self.member}"

    @property
    def sample_id(self) -> str:
        return f"{self.path}#{self.member.split('.', 1)[0]}"


class TarSample:
    """One sample's undecoded members (or the error that made it unreadable) and where it comes from."""

    def __init__(self, key: str | None, members: dict[str, bytes], ref: MemberRef, layout: TarLayout,
                 error: str | None = None):
        self.key, self.members, self.ref, self.layout, self.error = key, members, ref, layout, error

    def parse(self) -> dict:
        """The record of this sample (BadRecordError naming shard and member otherwise)."""
        if self.error:
            raise BadRecordError(self.error, self.ref)
        layout, key = self.layout, self.key
        record: dict = {}
        if "json" in self.members:
            where = f"{self.ref.path}, member {key}.json"
            try:
                record = parse_json_line(self.members["json"])
            except ValueError as exc:  # syntax, a duplicate key, NaN, not UTF-8
                raise BadRecordError(str(exc), where) from None
            if not isinstance(record, dict):
                raise BadRecordError(f"expected a JSON object, got {type(record).__name__}", where)
        image_ext = next((ext for ext in layout.image_exts if ext in self.members), None)
        if image_ext is None:
            raise BadRecordError(f"sample {key!r} has no image member (.{'/.'.join(layout.image_exts)}); its "
                                 f"members: {self.member_names()}", self.ref)
        record[layout.image_key] = self.members[image_ext]
        if layout.caption_key not in record and "txt" in self.members:
            try:
                record[layout.caption_key] = self.members["txt"].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRecordError(f"the caption is not UTF-8 ({exc})", f"{self.ref.path}, member {key}.txt") \
                    from None
        if layout.caption_required and layout.caption_key not in record:
            raise BadRecordError(f"sample {key!r} has no caption: neither {key}.txt nor a {layout.caption_key!r} "
                                 f"field in {key}.json (its members: {self.member_names()})", self.ref)
        return record

    def member_names(self) -> list[str]:
        return [f"{self.key}.{ext}" for ext in self.members]


def _primary_member(key: str, members: dict, layout: TarLayout) -> str:
    """The member a message about the sample names: its image if it has one, else its first member."""
    ext = next((e for e in layout.image_exts if e in members), next(iter(members), None))
    return f"{key}.{ext}" if ext else str(key)


class TailKeeper:
    """A file reader that remembers the last 1024 bytes read: a whole tar ends with two zero blocks, which tells a
    complete tar from one cut at a member boundary (tarfile reads both as a normal end)."""

    END_BLOCKS = b"\0" * 1024

    def __init__(self, stream):
        self.stream, self.tail = stream, b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.tail = (self.tail + data)[-1024:]
        return data

    def ends_whole(self) -> bool:
        """Read what is left (record padding) and tell whether the file ended with the end-of-archive blocks."""
        while self.read(1 << 16):
            pass
        return self.tail == self.END_BLOCKS


def iter_shard_samples(shard: DataPath, file_index: int, count: int, layout: TarLayout) -> Iterator[TarSample]:
    """Every sample of a shard, in order (webdataset's tar member iterator, our grouping by key). When the tar ends
    before ``count`` samples or breaks off (truncated, damaged), the sample being read comes out broken."""
    url = str(shard)
    state = {"member": None, "failure": None}

    def note_member(name):  # webdataset calls this before reading a member: the member a failure happens in
        state["member"] = name
        return name

    def stop(exc):
        state["failure"] = exc
        return False

    key, members, index = None, {}, 0
    try:
        with open_binary(shard) as raw:
            stream = TailKeeper(raw)
            for item in tar_file_iterator(stream, handler=stop, rename_files=note_member):
                prefix, ext = base_plus_ext(item["fname"])
                if prefix is None:
                    continue  # a member without extension belongs to no sample
                ext = ext.lower()
                if prefix != key:
                    if key is not None:
                        yield TarSample(key, members, MemberRef(url, file_index, index,
                                                                _primary_member(key, members, layout)), layout)
                        index += 1
                    key, members = prefix, {}
                if ext in members:
                    state["failure"] = ValueError(f"duplicate member {item['fname']} in sample {prefix!r}")
                    break
                members[ext] = item["data"]
            if state["failure"] is None and not stream.ends_whole():
                state["failure"] = EOFError("the file ends without the tar's end-of-archive blocks")
    except TRUNCATION_ERRORS as exc:
        state["failure"] = exc
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: tar shard not found") from None
    if key is None and state["failure"] is None:
        return
    failing_key = base_plus_ext(state["member"])[0] if state["member"] else None
    if state["failure"] is not None and key is not None and failing_key not in (None, key):
        # the failure is in the first member of a new sample: the one before it is whole
        yield TarSample(key, members, MemberRef(url, file_index, index, _primary_member(key, members, layout)),
                        layout)
        key, members, index = failing_key, {}, index + 1
    ref = MemberRef(url, file_index, index, state["member"] or (_primary_member(key, members, layout) if key else
                                                                "(first member)"))
    if state["failure"] is not None:
        yield TarSample(key, members, ref, layout,
                        error=f"unreadable tar ({type(state['failure']).__name__}: {state['failure']}); a truncated "
                              f"or damaged shard: the rest of it is lost")
    elif index + 1 < count:
        yield TarSample(key, members, ref, layout,
                        error=f"the tar ends after {index + 1} of the {count} samples its count names (a truncated "
                              f"shard?): this sample may be incomplete")
    else:
        yield TarSample(key, members, MemberRef(url, file_index, index, _primary_member(key, members, layout)),
                        layout)


def shard_piece(shard: DataPath, file_index: int, count: int, start: int, end: int,
                layout: TarLayout) -> Iterator[TarSample]:
    """The samples [start, end) of a shard of ``count`` samples; those the tar lacks come as broken samples."""
    read = 0
    for sample in iter_shard_samples(shard, file_index, count, layout):
        if read >= count:
            raise BadDataError(f"{shard} holds more than the {count} samples that {stats_path(shard)} names (a stale "
                               f"count): rewrite it with `python3 -m dataset.prepare stats {shard}`")
        if read >= start:
            yield sample
        read += 1
        if read >= end and end < count:
            return  # the rest belongs to other roles (at the shard's end we read on, to check the count)
    for index in range(max(read, start), end):
        yield TarSample(None, {}, MemberRef(str(shard), file_index, index, f"(sample {index + 1} of {count})"),
                        layout, error=f"missing: the tar ends after {read} of the {count} samples its count names "
                                      f"(a truncated shard?)")


# ------------------------------------------------------------------------------------------------- counts

def count_samples(shard: DataPath) -> tuple[int, str | None]:
    """(number of samples, error or None) of a shard, by reading it through (member data is not kept)."""
    keys = {"last": None, "n": 0}

    def observe(name: str) -> bool:
        prefix, _ = base_plus_ext(name)
        if prefix is not None and prefix != keys["last"]:
            keys["last"], keys["n"] = prefix, keys["n"] + 1
        return False

    failure: list = []

    def stop(exc) -> bool:
        failure.append(exc)
        return False

    try:
        with open_binary(shard) as raw:
            stream = TailKeeper(raw)
            for _ in tar_file_iterator(stream, handler=stop, select_files=observe):
                pass
            if not failure and not stream.ends_whole():
                failure.append(EOFError("the file ends without the tar's end-of-archive blocks"))
    except TRUNCATION_ERRORS as exc:
        failure.append(exc)
    except FileNotFoundError:
        raise FileNotFoundError(f"{shard}: tar shard not found") from None
    return keys["n"], (f"{type(failure[0]).__name__}: {failure[0]}" if failure else None)


def parse_stats(data: bytes | None, where: str) -> int | None:
    """The ``successes`` count of a _stats.json file (None when absent); a malformed file is an error."""
    if data is None:
        return None
    try:
        value = json.loads(data).get("successes")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise BadDataError(f"{where}: not a shard statistics file ({exc})") from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadDataError(f"{where}: 'successes' must be a sample count, got {value!r}")
    return value


def shard_sample_counts(shards: Sequence[DataPath], skip_bad_samples: bool, rank: int = 0,
                        world_size: int = 1) -> list[int]:
    """Each shard's sample count from its _stats.json; shards without one are counted by reading them, the work
    split over the ranks (every rank must call this, with the same shards)."""
    sidecars = read_many([stats_path(s) for s in shards])
    counts = {str(s): parse_stats(sidecars[stats_path(s)], stats_path(s)) for s in shards}
    missing = [k for k, v in counts.items() if v is None]
    distributed = world_size > 1 and is_dist()
    gather = all_gather_object if distributed else (lambda obj: [obj])  # the ranks' collective, or this process
    missing = sorted({name for gathered in gather(missing) for name in gathered})
    if missing:
        logger.warning("%d of %d tar shards have no _stats.json; reading them to count their samples (write the "
                       "counts once with `python3 -m dataset.prepare stats ...`)", len(missing), len(shards))
        mine = {name: count_samples(name) for name in (missing[rank::world_size] if distributed else missing)}
        for scanned in gather(mine):
            for name, (count, error) in scanned.items():
                if error and not skip_bad_samples:
                    raise BadDataError(f"{name}: unreadable tar after {count} samples ({error}); "
                                       "skip_bad_samples: true reads what it can")
                if error:
                    logger.warning("%s: unreadable tar after %d samples (%s); its other samples are lost", name,
                                   count, error)
                counts[name] = count
    return [counts[str(s)] for s in shards]


# ------------------------------------------------------------------------------------------------- the reader

def role_piece(rank_lo: int, rank_hi: int, role: int, n_roles: int) -> tuple[int, int]:
    """Role ``role``'s contiguous piece of the rank's samples [rank_lo, rank_hi): the first n % W pieces are longer."""
    n = rank_hi - rank_lo
    base, extra = divmod(n, n_roles)
    start = rank_lo + role * base + min(role, extra)
    return start, start + base + (1 if role < extra else 0)


class ShardedTars(ShardedSource):
    """The samples of a set of tar shards, split over ranks and worker roles per pass (see the module doc)."""

    def __init__(self, paths, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 0, layout: TarLayout = TarLayout(), skip_bad_samples: bool = False):
        super().__init__(list_data_files(paths, TAR_SUFFIXES), rank, world_size, seed, shuffle, shuffle_buffer)
        self.layout = layout
        self.counts = shard_sample_counts(self.files, skip_bad_samples, rank, world_size)
        self.total = sum(self.counts)

    def piece(self, role: int, n_roles: int) -> tuple[int, int]:
        """Role ``role``'s samples [start, end) in the pass's stream (this rank's share, cut in ``n_roles``)."""
        lo, hi = self.total * self.rank // self.world_size, self.total * (self.rank + 1) // self.world_size
        return role_piece(lo, hi, role, n_roles)

    def rank_records(self, epoch: int, role: int = 0, n_roles: int = 1, skip: int = 0) -> Iterator[TarSample]:
        """Role ``role``'s samples of pass ``epoch`` (after its first ``skip``): its contiguous piece of this rank's
        share, in stream order."""
        order = file_order(len(self.files), self.seed, epoch, self.shuffle)
        start, end = self.piece(role, n_roles)
        for index, first, last in ranges_between(self.counts, order, min(start + skip, end), end):
            yield from shard_piece(self.files[index], index, self.counts[index], first, last, self.layout)

    def role_count(self, epoch: int, role: int, n_roles: int) -> int:
        start, end = self.piece(role, n_roles)
        return end - start

    def role_records_from(self, epoch: int, role: int, n_roles: int, start: int) -> Iterator[TarSample]:
        """From the role's ``start``-th sample on; without a shuffle buffer the shards before it are not read."""
        if self.shuffle and self.shuffle_buffer > 1:  # the buffer's output depends on everything before
            return super().role_records_from(epoch, role, n_roles, start)
        return self.rank_records(epoch, role, n_roles, skip=start)


# ------------------------------------------------------------------------------------------------- writing

class TarShardWriter:
    """Writes samples as ``<prefix>-00000.tar``, ``<prefix>-00001.tar``, ... of ``shard_size`` samples each, every
    shard with its ``<prefix>-0000k_stats.json`` (img2dataset's ``successes`` count, which the reader needs). A shard
    is written under a temporary name and renamed when complete; ``on_shard(tar, stats)`` is called after each."""

    def __init__(self, out_dir, shard_size: int, prefix: str = "part", on_shard=None):
        if shard_size < 1:
            raise ValueError(f"shard size must be positive, got {shard_size}")
        self.out_dir, self.shard_size, self.prefix, self.on_shard = Path(out_dir), shard_size, prefix, on_shard
        self.paths: list[Path] = []
        self.samples_written = 0
        self._writer = self._file = None
        self._in_shard = 0

    def add(self, members: dict) -> str:
        """Write one sample: ``{ext: bytes | str | dict}`` (dicts become json); returns its key."""
        if self._writer is None:
            self._open()
        key = f"{self.samples_written:09d}"
        self._writer.write({"__key__": key, **members})
        self.samples_written += 1
        self._in_shard += 1
        if self._in_shard == self.shard_size:
            self._finish()
        return key

    def close(self) -> list[Path]:
        """Finish the last shard; the shard paths written."""
        if self._writer is not None:
            self._finish()
        return self.paths

    def _path(self) -> Path:
        return self.out_dir / f"{self.prefix}-{len(self.paths):05d}.tar"

    def _open(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self._path().with_suffix(".tar.tmp"), "wb")
        self._writer = TarWriter(self._file, mtime=0)  # fixed (an int: no PAX header): same samples, same bytes
        self._in_shard = 0

    def _finish(self) -> None:
        self._writer.close()
        self._file.close()
        path = self._path()
        os.replace(path.with_suffix(".tar.tmp"), path)
        stats = write_stats_file(path, self._in_shard)
        self.paths.append(path)
        self._writer = self._file = None
        if self.on_shard is not None:
            self.on_shard(path, stats)
