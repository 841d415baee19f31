"""Sharded jsonl reading: exactly-once splits over ranks x workers, shuffling, resume, errors with file:line."""
import json
import random

import pytest
import torch
from torch.utils.data import DataLoader

from dataset.shards import (BadDataError, BadRecordError, ShardedJsonl, ShardedJsonlDataset, batches_per_role,
                            keep_batch, list_jsonl_files)
from utils.remote import RemoteStorageError


def write_shards(folder, counts, pad=None):
    """Files shard-0.jsonl.. with records {"id": n} (ids consecutive over files); ``pad`` varies line lengths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    next_id, paths = 0, []
    for index, count in enumerate(counts):
        path = folder / f"shard-{index}.jsonl"
        lines = []
        for _ in range(count):
            record = {"id": next_id}
            if pad:
                record["pad"] = "x" * rng.randrange(pad)
            lines.append(json.dumps(record))
            next_id += 1
        path.write_text("".join(line + "\n" for line in lines))
        paths.append(path)
    return paths, next_id


def ids_of(records):
    return [json.loads(r.text)["id"] for r in records]


def take_id(record, ref, rng):
    return record["id"]


def take_id_and_randomness(record, ref, rng):
    return (record["id"], rng.random(), torch.rand(()).item())


def as_list(samples, rng):
    return list(samples)


def make_dataset(paths, batch_size, rank=0, world_size=1, seed=3, repeat=False, process=take_id, **kwargs):
    reader = ShardedJsonl(paths, rank, world_size, seed=seed, shuffle=True, shuffle_buffer=kwargs.pop("buffer", 0))
    return ShardedJsonlDataset(reader, process, as_list, batch_size, repeat=repeat, **kwargs)


def test_listing_is_sorted_and_expands_folders(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ["b.jsonl", "a.jsonl", "notes.txt", "_SUCCESS", ".hidden.jsonl"]:
        (folder / name).write_text("{}\n")
    single = tmp_path / "c.jsonl"
    single.write_text("{}\n")
    expected = [single, folder / "a.jsonl", folder / "b.jsonl"]  # sorted by full path: ".../c" < ".../data/a"
    assert list_jsonl_files([folder, single]) == expected


def test_listing_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list_jsonl_files([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        list_jsonl_files([tmp_path / "empty"])
    with pytest.raises(RemoteStorageError, match="hdfs://nowhere/data: no usable file system"):
        list_jsonl_files(["hdfs://nowhere/data"])  # fsspec's hdfs needs pyarrow, which is not a requirement


@pytest.mark.parametrize("counts,world,workers", [([7, 5, 9, 3], 2, 2), ([23], 3, 2), ([1, 40, 2], 4, 3),
                                                  ([10, 10], 5, 1)])
def test_roles_over_ranks_are_disjoint_and_complete(tmp_path, counts, world, workers):
    paths, total = write_shards(tmp_path / "d", counts, pad=200)
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            reader = ShardedJsonl(paths, rank, world, seed=5)
            for role in range(workers):
                seen += ids_of(reader.role_records(epoch, role, workers))
        assert sorted(seen) == list(range(total))


def test_two_ranks_two_workers_through_dataloader(tmp_path):
    paths, total = write_shards(tmp_path / "d", [6, 9, 4, 11], pad=50)
    per_rank = []
    for rank in range(2):
        dataset = make_dataset(paths, batch_size=1, rank=rank, world_size=2)
        loader = DataLoader(dataset, batch_size=None, collate_fn=keep_batch, num_workers=2)
        per_rank.append([i for batch in loader for i in batch])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(total))
    assert len(per_rank[0]) == len(set(per_rank[0]))


def test_order_depends_on_seed_and_epoch_only(tmp_path):
    paths, _ = write_shards(tmp_path / "d", [4] * 6)

    def order(seed, epoch):
        return ids_of(ShardedJsonl(paths, 0, 1, seed=seed).role_records(epoch, 0, 1))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert sorted(order(1, 0)) == sorted(order(1, 1))
    assert ids_of(ShardedJsonl(paths, 0, 1, shuffle=False).role_records(0, 0, 1)) == list(range(24))


def test_shuffle_buffer_keeps_every_record_and_mixes_files(tmp_path):
    paths, total = write_shards(tmp_path / "d", [30, 30])
    reader = ShardedJsonl(paths, 0, 1, seed=2, shuffle=True, shuffle_buffer=16)
    got = ids_of(reader.role_records(0, 0, 1))
    assert sorted(got) == list(range(total))
    assert got != sorted(got) and got[:30] != sorted(got[:30])


def test_last_batch_is_topped_up_with_the_first_samples(tmp_path):
    paths, _ = write_shards(tmp_path / "d", [7])
    reader = ShardedJsonl(paths, 0, 1, shuffle=False)
    batches = list(ShardedJsonlDataset(reader, take_id, as_list, batch_size=3))
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 0, 1]]


def test_batches_per_role_matches_a_finite_pass(tmp_path):
    paths, total = write_shards(tmp_path / "d", [11])
    assert batches_per_role(total, 2, 2) == [3, 3]  # roles get 6 and 5 records
    assert batches_per_role(5, 3, 1) == [2, 2, 1]
    reader = ShardedJsonl(paths, 0, 1, shuffle=False)
    loader = DataLoader(ShardedJsonlDataset(reader, take_id, as_list, 2), batch_size=None, collate_fn=keep_batch,
                        num_workers=2)
    assert [len(b) for b in loader] == [2] * 6


def collect(dataset, workers, n_batches=None):
    loader = DataLoader(dataset, batch_size=None, collate_fn=keep_batch, num_workers=workers)
    out = []
    for batch in loader:
        out.append(batch)
        if n_batches is not None and len(out) == n_batches:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_a_finite_pass_gives_the_remaining_batches(tmp_path, workers):
    paths, _ = write_shards(tmp_path / "d", [9, 8])
    full = collect(make_dataset(paths, 3, process=take_id_and_randomness), workers)
    assert len(full) == 6  # 2 roles: 9 and 8 records -> 3 + 3 batches; 1 role: 17 -> 6
    for k in ([1, 4, 6] if workers else [2, 5]):
        dataset = make_dataset(paths, 3, process=take_id_and_randomness)
        dataset.set_position(0, k)
        assert collect(dataset, workers) == full[k:], k


def test_resume_in_a_finite_pass_without_workers_every_k(tmp_path):
    paths, _ = write_shards(tmp_path / "d", [5, 6])
    full = collect(make_dataset(paths, 2, process=take_id_and_randomness), 0)
    for k in range(len(full) + 1):
        dataset = make_dataset(paths, 2, process=take_id_and_randomness)
        dataset.set_position(0, k)
        assert collect(dataset, 0) == full[k:]


def test_resume_across_passes_of_an_endless_stream(tmp_path):
    paths, _ = write_shards(tmp_path / "d", [6, 7])
    full = collect(make_dataset(paths, 3, repeat=True, process=take_id_and_randomness, buffer=4), 2, n_batches=16)
    for k in (3, 7, 12):  # roles get 7 and 6 records a pass: 3 and 2 batches, so 7 and 12 resume in later passes
        dataset = make_dataset(paths, 3, repeat=True, process=take_id_and_randomness, buffer=4)
        dataset.set_position(0, k)
        assert collect(dataset, 2, n_batches=16 - k) == full[k:], k


def test_two_ranks_resume_independently(tmp_path):
    paths, _ = write_shards(tmp_path / "d", [13])
    for rank in range(2):
        full = collect(make_dataset(paths, 2, rank=rank, world_size=2, repeat=True), 2, n_batches=9)
        dataset = make_dataset(paths, 2, rank=rank, world_size=2, repeat=True)
        dataset.set_position(0, 4)
        assert collect(dataset, 2, n_batches=5) == full[4:]


def test_set_epoch_reaches_persistent_workers(tmp_path):
    paths, _ = write_shards(tmp_path / "d", [5, 5, 5, 5])
    dataset = make_dataset(paths, 4)
    loader = DataLoader(dataset, batch_size=None, collate_fn=keep_batch, num_workers=2, persistent_workers=True)
    first = list(loader)
    dataset.set_epoch(1)
    second = list(loader)
    fresh = make_dataset(paths, 4)
    fresh.set_epoch(1)
    assert second == collect(fresh, 2)
    assert second != first


def test_endless_stream_refuses_a_worker_without_records(tmp_path):
    paths, _ = write_shards(tmp_path / "d", [1])
    dataset = make_dataset(paths, 1, rank=1, world_size=2, repeat=True)  # rank 1's byte range holds no line start
    with pytest.raises(ValueError, match="role 0 of 1 on rank 1 got no record"):
        collect(dataset, 0, n_batches=3)


def test_malformed_line_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 0}\n{"id": 1}\n\n{"id": 2,\n{"id": 3}\n')
    with pytest.raises(BadRecordError, match=r"bad\.jsonl:4: malformed JSON"):
        list(make_dataset([path], 1))
    path.write_text('{"id": 0}\n[1, 2]\n')
    with pytest.raises(BadRecordError, match=r"bad\.jsonl:2: expected a JSON object"):
        list(make_dataset([path], 1))


def test_line_numbers_are_right_for_a_rank_starting_mid_file(tmp_path):
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"id": i}) for i in range(40)]
    lines[33] = "not json"
    path.write_text("\n".join(lines) + "\n")
    errors = []
    for rank in range(4):
        try:
            list(make_dataset([path], 1, rank=rank, world_size=4))
        except BadRecordError as error:
            errors.append((rank, str(error)))
    assert errors == [(3, f"{path}:34: malformed JSON (Expecting value, column 1)")]


def test_bad_records_are_skipped_counted_and_bounded(tmp_path):
    path = tmp_path / "some_bad.jsonl"
    lines = [json.dumps({"id": i}) if i % 10 else "{broken" for i in range(1, 101)]
    path.write_text("\n".join(lines) + "\n")
    kept = [i for batch in make_dataset([path], 5, skip_bad_samples=True, max_bad_fraction=0.2) for i in batch]
    assert sorted(set(kept)) == [i for i in range(1, 101) if i % 10]
    with pytest.raises(BadDataError, match=r"5 of 50 records were bad .*some_bad\.jsonl:50: malformed"):
        list(make_dataset([path], 5, skip_bad_samples=True, max_bad_fraction=0.05, min_records_for_bad_check=50))


def test_errors_in_workers_reach_the_main_process_with_file_and_line(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)) + "{nope\n")
    with pytest.raises(BadRecordError, match=r"w\.jsonl:7: malformed JSON"):
        collect(make_dataset([path], 2), 2)


def test_the_main_process_random_stream_is_left_alone(tmp_path):
    paths, _ = write_shards(tmp_path / "d", [5])
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    batches = list(make_dataset(paths, 2, process=take_id_and_randomness))
    assert torch.equal(torch.rand(3), expected)
    assert len({b[0][2] for b in batches}) == len(batches)  # the samples did draw from torch
