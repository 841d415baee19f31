"""Sharded JSON-lines streams for pre-training: every record exactly once per pass over ranks x DataLoader workers,
an order drawn from (seed, epoch), a resumable position, and errors that name file and line.

How a pass is split
  * Files: the listed ``.jsonl`` files and the ``.jsonl`` files of the listed folders, sorted by path; local paths
    or fsspec URLs, brace patterns expanded (dataset.sources). Every worker of a rank reads the rank's bytes, which
    costs nothing extra locally but W downloads remotely: fine for parallel text, use tar shards for images.
  * Ranks (byte ranges, so one file and many ranks works): for pass ``epoch`` the files are put in an order drawn
    from (seed, epoch) and seen as one byte stream of T bytes. Rank r of R reads the lines that START in bytes
    [T*r//R, T*(r+1)//R). Ranks are therefore disjoint and complete for any number of files; each reads about T/R
    bytes (at most two files partially). Ranks are balanced by bytes, not by records.
  * Workers (line level): the rank's records are dealt round-robin; worker role w of W takes the rank's records
    w, w+W, w+2W, ... Every worker reads the rank's bytes (the page cache serves the repeats) but parses only its
    own lines. Dealing records keeps the workers' counts within one of each other; the resume rule needs that.
  * Blank lines are not records. Within a worker, records keep stream order, or go through a shuffle buffer of
    ``shuffle_buffer`` records seeded by (seed, epoch, rank, role).

Batches
  Each worker makes its own batches of ``batch_size`` records and the DataLoader (``batch_size=None``) hands them out
  round-robin, worker 0 first. The last batch of a worker's pass is topped up with the first samples of that pass so
  that every batch has the same size (the model all-gathers features across ranks); those few samples are seen twice.
  A skipped bad record (``skip_bad_samples``) is replaced by the next record.

Resume position (granularity: one batch of this rank's loader)
  Position = (epoch, k): the loader has yielded k batches since pass ``epoch`` began. Worker counts differ by at most
  one batch, so batch k of a rank always comes from worker role k % W (in a finite pass the workers that run out
  first are the highest roles, which keeps this true). A resumed loader gives its worker w the role (w + k) % W; the
  role skips the (k - role + W - 1) // W batches it had produced by reading raw lines (no JSON parsing, no image
  decoding). All randomness of a sample is seeded by (seed, name, epoch, file, byte offset), so the remaining
  batches equal those of an uninterrupted run. Not exact only when bad records were skipped before the position:
  each shifts the resumed worker by one record.

Two ways to run epochs
  * ``repeat=False``: one pass per iteration. Ranks may get different numbers of batches in a pass (the split is by
    bytes), so a step-driven loop restarts a rank's loader when it runs out: ``set_epoch(epoch + 1)`` and a new
    ``iter``; each rank keeps its own (epoch, k) and a resume skips at most one pass. Shared memory carries
    ``set_epoch``/``set_position`` to persistent workers.
  * ``repeat=True``: passes epoch, epoch+1, ... chained into an endless stream (the reference's behaviour). k counts
    batches since the loader started at pass ``epoch``, which is the same on every rank, but a resume reads (raw)
    everything consumed since that start, so long runs are better served by the first way.

Bad records
  ``BadRecordError`` (an AnnotationError) names ``file:line``. With ``skip_bad_samples`` the record is logged,
  counted and skipped; a worker raises ``BadDataError`` once more than ``max_bad_fraction`` of the records it has
  read were bad (checked from ``min_records_for_bad_check`` records on; the count runs over passes, per worker).

The same split, batching, resume and bad-record rules serve webdataset tar shards (dataset.tars), whose reader splits
by sample counts instead of bytes and dealing.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import multiprocessing
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from dataset.errors import AnnotationError, BadDataError, BadRecordError
from dataset.jsondoc import parse_json_line
from dataset.sources import DataPath, file_size, list_data_files, open_binary

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------------- file listing

def list_jsonl_files(paths: PathLike | Sequence[PathLike]) -> list[DataPath]:
    """The ``.jsonl`` files named by ``paths`` (files, folders whose ``.jsonl`` files are taken, brace patterns;
    local paths or fsspec URLs, see dataset.sources), sorted by path."""
    return list_data_files(paths, ".jsonl")


# ------------------------------------------------------------------------------------------------- locations

_LINE_CACHE: dict[str, tuple[int, int]] = {}  # path -> (byte offset, line number there), the last one computed


def line_number_at(path: str, offset: int) -> int:
    """1-based line number of the line starting at byte ``offset`` (counts newlines; only needed for messages)."""
    known_offset, known_line = _LINE_CACHE.get(path, (0, 1))
    if offset < known_offset:
        known_offset, known_line = 0, 1
    newlines, remaining = 0, offset - known_offset
    with open_binary(path) as f:
        f.seek(known_offset)
        while remaining > 0:
            chunk = f.read(min(1 << 22, remaining))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            remaining -= len(chunk)
    line = known_line + newlines
    _LINE_CACHE[path] = (offset, line)
    return line


@dataclass(frozen=True)
class LineRef:
    """Where a record lives: file, its index in the sorted file list, and the byte offset of its line."""

    path: str
    file_index: int
    offset: int

    @property
    def line(self) -> int:
        return line_number_at(self.path, self.offset)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def sample_id(self) -> str:
        return f"{self.path}@{self.offset}"


@dataclass(frozen=True)
class RawRecord:
    """One undecoded line and where it comes from."""

    text: bytes
    ref: LineRef

    def parse(self) -> dict:
        """The JSON object of this line (BadRecordError naming file and line otherwise)."""
        try:
            record = parse_json_line(self.text)
        except ValueError as exc:
            raise BadRecordError(str(exc), self.ref) from None
        if not isinstance(record, dict):
            raise BadRecordError(f"expected a JSON object, got {type(record).__name__}", self.ref)
        return record


# ------------------------------------------------------------------------------------------------- splitting

def derived_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across processes and Python runs)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def file_order(n_files: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which pass ``epoch`` sees the files (sorted order when not shuffling)."""
    order = list(range(n_files))
    if shuffle:
        random.Random(derived_seed(seed, epoch, "files")).shuffle(order)
    return order


def rank_byte_ranges(sizes: Sequence[int], order: Sequence[int], rank: int,
                     world_size: int) -> list[tuple[int, int, int]]:
    """(file index, start, end) byte ranges of rank ``rank``: lines starting there are its lines."""
    total = sum(sizes)
    return ranges_between(sizes, order, total * rank // world_size, total * (rank + 1) // world_size)


def ranges_between(sizes: Sequence[int], order: Sequence[int], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """(file index, start, end) pieces of the units [lo, hi) of the files' concatenation in ``order``."""
    ranges, base = [], 0
    for index in order:
        start, end = max(lo, base), min(hi, base + sizes[index])
        if start < end:
            ranges.append((index, start - base, end - base))
        base += sizes[index]
    return ranges


def iter_lines_starting_in(path: DataPath, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every line of ``path`` whose first byte lies in [start, end)."""
    with open_binary(path) as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line in progress belongs to the range before
        while True:
            offset = f.tell()
            if offset >= end:
                return
            line = f.readline()
            if not line:
                return
            yield offset, line


# ------------------------------------------------------------------------------------------------- the reader

class ShardedSource:
    """What the readers of sharded files share: the file list, this rank, the seed, the shuffles.

    A reader's ``rank_records(epoch, role, n_roles)`` yields worker role ``role``'s raw records of pass ``epoch``
    (objects with ``ref`` and ``parse()``); ShardedJsonlDataset batches them.
    """

    def __init__(self, files: list[DataPath], rank: int, world_size: int, seed: int, shuffle: bool,
                 shuffle_buffer: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.files = files
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer

    def describe(self) -> str:
        """A short name of the data for messages."""
        first = str(self.files[0])
        return first if len(self.files) == 1 else f"{first} and {len(self.files) - 1} more files"

    def rank_records(self, epoch: int, role: int = 0, n_roles: int = 1) -> Iterator:
        raise NotImplementedError

    def role_records(self, epoch: int, role: int, n_roles: int) -> Iterator:
        """Worker role ``role``'s records of pass ``epoch`` (its share of the rank's records, then the buffer)."""
        dealt = self.rank_records(epoch, role, n_roles)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(derived_seed(self.seed, epoch, self.rank, role, "buffer"))
            return shuffle_buffered(dealt, self.shuffle_buffer, rng)
        return dealt

    def role_count(self, epoch: int, role: int, n_roles: int) -> int | None:
        """The role's number of records in pass ``epoch`` when known without reading them (else None)."""
        return None

    def role_records_from(self, epoch: int, role: int, n_roles: int, start: int) -> Iterator:
        """The role's records of pass ``epoch`` from its ``start``-th on (a reader that can jump overrides this)."""
        return itertools.islice(self.role_records(epoch, role, n_roles), start, None)


class ShardedJsonl(ShardedSource):
    """The records of a set of jsonl shards, split over ranks and worker roles per pass (see the module doc)."""

    def __init__(self, paths: PathLike | Sequence[PathLike], rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 0):
        super().__init__(list_jsonl_files(paths), rank, world_size, seed, shuffle, shuffle_buffer)
        self.sizes = [file_size(f) for f in self.files]

    def rank_records(self, epoch: int, role: int = 0, n_roles: int = 1) -> Iterator[RawRecord]:
        """This rank's records of pass ``epoch`` in stream order; with roles, only every ``n_roles``-th from ``role``."""
        order = file_order(len(self.files), self.seed, epoch, self.shuffle)
        count = 0
        for index, start, end in rank_byte_ranges(self.sizes, order, self.rank, self.world_size):
            path = self.files[index]
            for offset, line in iter_lines_starting_in(path, start, end):
                if not line.strip():
                    continue
                if count % n_roles == role:
                    yield RawRecord(line, LineRef(str(path), index, offset))
                count += 1


def shuffle_buffered(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """Approximate shuffle: keep ``size`` items, emit a random one each time a new one comes in."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


# ------------------------------------------------------------------------------------------------- RNG scope

@contextlib.contextmanager
def seeded_sample_rng(seed: int):
    """Seed torch's CPU generator for one sample (torchvision transforms draw from it) and restore it afterwards.

    Only the CPU generator is touched, so the main process's random stream is unchanged when ``num_workers=0``.
    """
    state = torch.random.get_rng_state()
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


# ------------------------------------------------------------------------------------------------- the dataset

class BadRecordCounter:
    """Counts a worker's records and bad records and raises when the bad fraction passes the bound."""

    def __init__(self, skip: bool, max_fraction: float, min_records: int, what: str):
        self.skip, self.max_fraction, self.min_records, self.what = skip, max_fraction, min_records, what
        self.seen = self.bad = 0

    def good(self) -> None:
        self.seen += 1
        self.check()

    def failed(self, error: BadRecordError) -> None:
        """Count a bad record; re-raise it unless skipping is allowed."""
        if not self.skip:
            raise error
        self.seen += 1
        self.bad += 1
        if self.bad <= 10 or self.bad % 1000 == 0:
            logger.warning("skipped bad record %d (of %d read) in %s: %s", self.bad, self.seen, self.what, error)
        self.last_error = error
        self.check()

    def check(self) -> None:
        if self.bad and self.seen >= self.min_records and self.bad / self.seen > self.max_fraction:
            raise BadDataError(f"{self.what}: {self.bad} of {self.seen} records were bad "
                               f"({self.bad / self.seen:.2%} > max_bad_fraction {self.max_fraction:.2%}); "
                               f"the last one: {self.last_error}")


def keep_batch(batch):
    """DataLoader collate_fn for datasets that yield ready batches."""
    return batch


class ShardedJsonlDataset(IterableDataset):
    """Batches of processed records from a :class:`ShardedSource` (:class:`ShardedJsonl`, or dataset.tars's
    ShardedTars); use with ``DataLoader(batch_size=None)``.

    ``process(record: dict, ref, rng: random.Random) -> sample`` turns one record into a sample (raising
    BadRecordError for bad input) and ``collate(samples, rng) -> batch`` makes a batch. Both run in the worker, with
    torch's CPU generator seeded per sample (per batch for ``collate``). With ``sample_log`` (a folder) every worker
    appends ``pass<TAB>sample id`` for each sample it processes to ``<name>-rank<r>-worker<w>.tsv`` there (the id:
    ``file@byte offset`` for jsonl, ``shard#key`` for tars), which lets a test check that a pass saw every sample
    once (the top-up samples of a last batch are not processed again, so not logged again).
    """

    def __init__(self, reader: ShardedSource, process: Callable, collate: Callable, batch_size: int,
                 epoch: int = 0, repeat: bool = False, skip_bad_samples: bool = False,
                 max_bad_fraction: float = 0.01, min_records_for_bad_check: int = 100, name: str = "data",
                 sample_log: PathLike | None = None):
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be positive, got {batch_size}")
        self.reader, self.process, self.collate = reader, process, collate
        self.batch_size, self.repeat, self.name = batch_size, repeat, name
        self.skip_bad_samples, self.max_bad_fraction = skip_bad_samples, max_bad_fraction
        self.min_records_for_bad_check = min_records_for_bad_check
        self.sample_log, self._log_file = sample_log, None
        # Shared memory, so that persistent DataLoader workers see set_epoch/set_position made after they started.
        self._position = multiprocessing.RawArray("q", [epoch, 0])

    # ---- position
    @property
    def epoch(self) -> int:
        return self._position[0]

    @property
    def start_batches(self) -> int:
        return self._position[1]

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of pass ``epoch``."""
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, batches_consumed: int) -> None:
        """Start the next iteration after ``batches_consumed`` batches of pass ``epoch`` (a resume)."""
        if epoch < 0 or batches_consumed < 0:
            raise ValueError(f"{self.name}: invalid position ({epoch}, {batches_consumed})")
        self._position[0], self._position[1] = epoch, batches_consumed

    # ---- iteration
    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, k = self.epoch, self.start_batches
        role = (worker + k) % n_workers
        to_skip = (k - role + n_workers - 1) // n_workers if k > role else 0
        counter = BadRecordCounter(self.skip_bad_samples, self.max_bad_fraction, self.min_records_for_bad_check,
                                   f"{self.name} ({self.reader.describe()}, rank {self.reader.rank}, worker {worker})")
        while True:
            had_records, to_skip = yield from self._pass_batches(epoch, role, n_workers, to_skip, counter)
            if not self.repeat:
                return
            if not had_records:  # an endless stream would wait for this worker forever
                raise ValueError(f"{self.name}: worker role {role} of {n_workers} on rank {self.reader.rank} got no "
                                 f"record in pass {epoch} of {self.reader.describe()}: too little data for "
                                 f"{self.reader.world_size} ranks x {n_workers} workers")
            epoch += 1

    def _skip_batches(self, epoch: int, role: int, n_roles: int, to_skip: int) -> tuple[list, Iterator, int, int]:
        """(the pass's first raw batch (the top-up pool of a resumed pass), the records after the skipped batches,
        batches skipped, batches still to skip when the pass is shorter). A reader that knows the role's record count
        jumps over them (dataset.tars without a shuffle buffer); otherwise the skipped records are read raw."""
        count = self.reader.role_count(epoch, role, n_roles) if to_skip else None
        if count is not None:
            batches = math.ceil(count / self.batch_size)
            if to_skip >= batches:
                return [], iter(()), batches, to_skip - batches
            first_raw = list(itertools.islice(self.reader.role_records(epoch, role, n_roles), self.batch_size))
            return first_raw, self.reader.role_records_from(epoch, role, n_roles, to_skip * self.batch_size), \
                to_skip, 0
        records = iter(self.reader.role_records(epoch, role, n_roles))
        first_raw: list = []
        skipped = 0
        while skipped < to_skip:
            chunk = list(itertools.islice(records, self.batch_size))
            if not chunk:
                return first_raw, records, skipped, to_skip - skipped
            first_raw = first_raw or chunk
            skipped += 1
        return first_raw, records, skipped, 0

    def _pass_batches(self, epoch: int, role: int, n_roles: int, to_skip: int, counter: BadRecordCounter):
        """Yield this role's batches of one pass after skipping ``to_skip``; return (any record?, still to skip)."""
        first_raw, records, skipped_batches, still = self._skip_batches(epoch, role, n_roles, to_skip)
        if still:
            return skipped_batches > 0, still
        batch_index, had_records, pool = skipped_batches, skipped_batches > 0, None
        batch: list = []
        for raw in records:
            had_records = True
            sample = self._process(raw, epoch, counter)
            if sample is None:
                continue
            batch.append(sample)
            if len(batch) == self.batch_size:
                if batch_index == 0:
                    pool = list(batch)
                yield self._collate(batch, epoch, role, batch_index)
                batch, batch_index = [], batch_index + 1
        if batch:
            if pool is None:  # the pass's first batch was skipped (resume) or this is the first batch
                pool = [s for s in (self._process(r, epoch, counter) for r in first_raw) if s is not None] or batch
            filler = (pool * self.batch_size)[:self.batch_size - len(batch)]
            yield self._collate(batch + filler, epoch, role, batch_index)
        return had_records, 0

    def _process(self, raw: RawRecord, epoch: int, counter: BadRecordCounter):
        """The sample of one record, or None when it is bad and skipping is allowed."""
        seed = derived_seed(self.reader.seed, self.name, epoch, raw.ref.file_index, raw.ref.offset)
        try:
            record = raw.parse()
            with seeded_sample_rng(seed):
                sample = self.process(record, raw.ref, random.Random(seed))
        except AnnotationError as error:  # a BadRecordError, or an image path that leaves its root
            counter.failed(error)
            return None
        counter.good()
        if self.sample_log is not None:
            self._log_sample(epoch, raw.ref)
        return sample

    def _log_sample(self, epoch: int, ref) -> None:
        """Append (pass, sample id) to this worker's file under ``sample_log`` (line-buffered: a kill loses nothing)."""
        if self._log_file is None or self._log_file[0] != os.getpid():
            info = get_worker_info()
            folder = Path(self.sample_log)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{self.name}-rank{self.reader.rank}-worker{info.id if info is not None else 0}.tsv"
            self._log_file = (os.getpid(), open(folder / name, "a", encoding="utf-8", buffering=1))
        self._log_file[1].write(f"{epoch}\t{ref.sample_id}\n")

    def _collate(self, samples: list, epoch: int, role: int, batch_index: int):
        seed = derived_seed(self.reader.seed, self.name, epoch, self.reader.rank, role, batch_index, "collate")
        with seeded_sample_rng(seed):
            return self.collate(samples, random.Random(seed))


def batches_per_role(n_records: int, n_roles: int, batch_size: int) -> list[int]:
    """How many batches each worker role makes from a rank's ``n_records`` records in one pass."""
    return [math.ceil(math.ceil(max(n_records - role, 0) / n_roles) / batch_size) for role in range(n_roles)]
