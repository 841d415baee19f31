"""Tar shards: exactly-once splits by sample counts over ranks x workers, resume, counts from _stats.json or a scan,
bad samples (truncated tar, no caption, undecodable image) counted or named by shard and member, S3 through fsspec."""
import io
import json
import re

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from dataset.shards import BadDataError, BadRecordError, ShardedJsonlDataset, batches_per_role, keep_batch
from dataset.tars import ShardedTars, TarLayout, TarShardWriter, role_piece, stats_path
from utils.remote import url_filesystem


def png_bytes(color=(200, 10, 10)):
    out = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(out, format="PNG")
    return out.getvalue()


def write_tar_shards(folder, counts, members=None):
    """Shards shard-<i>-00000.tar holding counts[i] samples {png, txt, json {"id": n}} (ids consecutive)."""
    members = members or (lambda n: {"png": b"not decoded here", "txt": f"caption {n}", "json": {"id": n}})
    paths, next_id = [], 0
    for index, count in enumerate(counts):
        writer = TarShardWriter(folder, shard_size=count, prefix=f"shard-{index}")
        for _ in range(count):
            writer.add(members(next_id))
            next_id += 1
        paths += writer.close()
    return paths, next_id


def take_id(record, ref, rng):
    return record["id"]


def as_list(samples, rng):
    return list(samples)


def ids_of(samples):
    return [json.loads(s.members["json"])["id"] for s in samples]


@pytest.mark.parametrize("counts,world,workers", [([7, 5, 9, 3], 2, 2), ([23], 3, 2), ([1, 40, 2], 4, 3),
                                                  ([10, 10], 5, 1), ([3, 3, 3], 2, 4)])
def test_roles_over_ranks_are_disjoint_complete_and_balanced(tmp_path, counts, world, workers):
    paths, total = write_tar_shards(tmp_path / "d", counts)
    for epoch in (0, 1):
        seen, sizes = [], []
        for rank in range(world):
            reader = ShardedTars(paths, rank, world, seed=5)
            for role in range(workers):
                got = ids_of(reader.role_records(epoch, role, workers))
                seen += got
                sizes.append(len(got))
        assert sorted(seen) == list(range(total))
        assert max(sizes) - min(sizes) <= 1  # by samples, whatever the shard counts
        for rank in range(world):  # within a rank the first roles hold the extra sample (the resume rule needs it)
            per_role = sizes[rank * workers:(rank + 1) * workers]
            assert per_role == sorted(per_role, reverse=True)


def test_role_pieces():
    assert [role_piece(10, 20, r, 4) for r in range(4)] == [(10, 13), (13, 16), (16, 18), (18, 20)]
    assert [role_piece(0, 2, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]


def test_order_depends_on_seed_and_epoch_only(tmp_path):
    paths, total = write_tar_shards(tmp_path / "d", [4] * 6)

    def order(seed, epoch, **kw):
        return ids_of(ShardedTars(paths, 0, 1, seed=seed, **kw).role_records(epoch, 0, 1))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and sorted(order(1, 0)) == sorted(order(1, 1)) == list(range(total))
    assert order(1, 0, shuffle=False) == list(range(total))
    buffered = order(1, 0, shuffle_buffer=8)
    assert sorted(buffered) == list(range(total)) and buffered != order(1, 0)


def tar_dataset(paths, batch_size, rank=0, world_size=1, seed=3, **kwargs):
    reader = ShardedTars(paths, rank, world_size, seed=seed, shuffle=True,
                         skip_bad_samples=kwargs.get("skip_bad_samples", False))
    return ShardedJsonlDataset(reader, take_id, as_list, batch_size, **kwargs)


def test_two_ranks_two_workers_through_dataloader(tmp_path):
    paths, total = write_tar_shards(tmp_path / "d", [6, 9, 4, 11, 5])
    per_rank = []
    for rank in range(2):
        loader = DataLoader(tar_dataset(paths, 1, rank, 2), batch_size=None, collate_fn=keep_batch, num_workers=2)
        per_rank.append([i for batch in loader for i in batch])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(total))
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_a_pass_gives_the_remaining_batches(tmp_path, workers):
    paths, _ = write_tar_shards(tmp_path / "d", [5, 8, 6])
    full = list(DataLoader(tar_dataset(paths, 2), batch_size=None, collate_fn=keep_batch, num_workers=workers))
    assert len(full) == sum(batches_per_role(19, max(workers, 1), 2))
    for k in (1, 3, len(full) - 1):
        dataset = tar_dataset(paths, 2)
        dataset.set_position(0, k)
        rest = list(DataLoader(dataset, batch_size=None, collate_fn=keep_batch, num_workers=workers))
        assert rest == full[k:], k


def test_counts_come_from_stats_files_or_a_scan(tmp_path, caplog):
    paths, total = write_tar_shards(tmp_path / "d", [3, 4])
    assert json.loads(open(stats_path(paths[0])).read())["successes"] == 3
    assert ShardedTars(paths).counts == [3, 4]
    (tmp_path / "d" / "shard-1-00000_stats.json").unlink()
    assert ShardedTars(paths).counts == [3, 4]
    assert "1 of 2 tar shards have no _stats.json" in caplog.text
    assert ShardedTars(paths, rank=1, world_size=2).counts == [3, 4]  # no process group: this process counts all
    (tmp_path / "d" / "shard-0-00000_stats.json").write_text('{"successes": 2}')  # stale: the shard holds 3
    with pytest.raises(BadDataError, match=r"shard-0-00000.tar holds more than the 2 samples .* stale"):
        list(ShardedTars(paths, shuffle=False).role_records(0, 0, 1))
    (tmp_path / "d" / "shard-0-00000_stats.json").write_text('{"successes": "many"}')
    with pytest.raises(BadDataError, match=r"shard-0-00000_stats.json: 'successes' must be a sample count"):
        ShardedTars(paths)


def test_captions_from_a_json_field_or_the_txt_member(tmp_path):
    samples = [{"jpg": b"a", "json": {"caption": {"en": "a cat", "de": "eine katze"}, "url": "x"}},
               {"jpg": b"b", "txt": "a plain caption"},
               {"jpg": b"c", "txt": "ignored", "json": {"caption": "from the json"}},
               {"png": b"d", "json": {"elems": [{"bb": [0, 0, 1, 1], "caption": "a box"}]}}]
    paths, _ = write_tar_shards(tmp_path / "d", [4], members=lambda n: samples[n])
    records = [s.parse() for s in ShardedTars(paths, shuffle=False, layout=TarLayout(caption_required=False))
               .role_records(0, 0, 1)]
    assert records[0] == {"caption": {"en": "a cat", "de": "eine katze"}, "url": "x", "binary": b"a"}
    assert records[1] == {"binary": b"b", "caption": "a plain caption"}
    assert records[2]["caption"] == "from the json"
    assert records[3]["binary"] == b"d" and "caption" not in records[3] and records[3]["elems"][0]["bb"] == [0, 0, 1, 1]
    layout = TarLayout(image_exts=("png",), image_key="img", caption_key="desc")
    sample = next(ShardedTars(paths, shuffle=False, layout=layout).role_records(0, 0, 1))
    with pytest.raises(BadRecordError, match=r"shard-0-00000.tar, member 000000000.jpg: sample '000000000' has no "
                                             r"image member \(.png\)"):
        sample.parse()


def image_text_process(record, ref, rng):
    """Decode the image as the pre-training reader does; the sample is its json id."""
    from dataset.pretrain_common import read_record_image, require

    read_record_image(record, "binary", False, ref)
    require(record, "caption", ref)
    return json.loads(json.dumps(record.get("id")))


def broken_shards(folder):
    """Three shards of 4 good samples; then one without caption, one undecodable image, and a truncated tar."""
    good = lambda n: {"png": png_bytes(), "txt": "fine", "json": {"id": n}}  # noqa: E731
    paths, _ = write_tar_shards(folder, [4, 4, 4], members=good)
    writer = TarShardWriter(folder, 4, prefix="shard-3")
    for n in range(12, 16):
        members = good(n)
        if n == 13:
            del members["txt"]
        if n == 14:
            members["png"] = b"\x89PNG garbage"
        writer.add(members)
    paths += writer.close()
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:len(data) // 2])  # cut inside the third shard: its _stats.json still says 4
    return paths


def test_bad_samples_name_shard_and_member(tmp_path):
    paths = broken_shards(tmp_path / "d")

    def first_error(shard):
        reader = ShardedTars([shard], shuffle=False)
        dataset = ShardedJsonlDataset(reader, image_text_process, as_list, batch_size=4)
        with pytest.raises(BadRecordError) as info:
            list(dataset)
        return str(info.value)

    assert "shard-3-00000.tar, member 000000001.png: sample '000000001' has no caption" in first_error(paths[3])
    assert re.search(r"shard-2-00000.tar, member 00000000\d\.(png|txt|json): (unreadable tar|the tar ends)",
                     first_error(paths[2]))
    for cut in range(600, 2600, 97):  # cut inside headers, padding and member data of the first samples
        cut_path = tmp_path / f"cut-{cut}.tar"
        cut_path.write_bytes(paths[0].read_bytes()[:cut])
        (tmp_path / f"cut-{cut}_stats.json").write_text('{"successes": 4}')
        assert re.search(rf"cut-{cut}.tar, member (00000000\d\.(png|txt|json)|\(sample \d of 4\)|\(first member\)): "
                         r"(unreadable tar|the tar ends|missing)", first_error(cut_path)), cut


def test_undecodable_image_names_its_member(tmp_path):
    writer = TarShardWriter(tmp_path, 2, prefix="bad")
    writer.add({"png": png_bytes(), "txt": "fine", "json": {"id": 0}})
    writer.add({"png": b"\x89PNG garbage", "txt": "fine", "json": {"id": 1}})
    paths = writer.close()
    dataset = ShardedJsonlDataset(ShardedTars(paths, shuffle=False), image_text_process, as_list, batch_size=2)
    with pytest.raises(BadRecordError, match=r"bad-00000.tar, member 000000001.png: cannot decode the image"):
        list(dataset)


def test_skip_mode_counts_truncated_captionless_and_undecodable_samples(tmp_path, caplog):
    paths = broken_shards(tmp_path / "d")
    reader = ShardedTars(paths, shuffle=False, skip_bad_samples=True)
    dataset = ShardedJsonlDataset(reader, image_text_process, as_list, batch_size=1, skip_bad_samples=True,
                                  max_bad_fraction=0.5, min_records_for_bad_check=1)
    got = sorted(i for batch in dataset for i in batch)
    truncated_lost = [i for i in range(8, 12) if i not in got]
    assert truncated_lost and got == sorted(set(range(16)) - {13, 14} - set(truncated_lost))
    skipped = [r.getMessage() for r in caplog.records if "skipped bad record" in r.getMessage()]
    assert len(skipped) == 2 + len(truncated_lost)
    assert any("member 000000001.png: sample '000000001' has no caption" in m for m in skipped)
    assert any("member 000000002.png: cannot decode the image" in m for m in skipped)
    assert any("shard-2-00000.tar" in m for m in skipped)
    strict = ShardedJsonlDataset(ShardedTars(paths, shuffle=False, skip_bad_samples=True), image_text_process,
                                 as_list, batch_size=1, skip_bad_samples=True, max_bad_fraction=0.05,
                                 min_records_for_bad_check=8)
    with pytest.raises(BadDataError, match="max_bad_fraction"):
        list(strict)


def test_shards_on_s3_two_ranks_two_workers(tmp_path, s3_bucket):
    paths, total = write_tar_shards(tmp_path / "d", [7, 5, 9])
    fs, root = url_filesystem(s3_bucket)
    fs.put([str(p) for p in sorted((tmp_path / "d").iterdir())], f"{root}/shards/")
    pattern = f"{s3_bucket}/shards/shard-{{0..2}}-00000.tar"
    seen = []
    for rank in range(2):
        dataset = ShardedJsonlDataset(ShardedTars(pattern, rank, 2, seed=1), take_id, as_list, batch_size=1)
        loader = DataLoader(dataset, batch_size=None, collate_fn=keep_batch, num_workers=2)
        seen += [i for batch in loader for i in batch]
    assert sorted(seen) == list(range(total))
    assert str(ShardedTars(f"{s3_bucket}/shards/", 0, 1).files[0]) == f"{s3_bucket}/shards/shard-0-00000.tar"


def test_a_resumed_role_jumps_over_the_shards_it_had_consumed(tmp_path):
    import itertools

    paths, _ = write_tar_shards(tmp_path / "d", [4, 4, 4, 4])
    reader = ShardedTars(paths, seed=0, shuffle=False)
    for start in (0, 3, 4, 9, 16):
        assert ids_of(reader.role_records_from(0, 0, 1, start)) == ids_of(
            itertools.islice(reader.role_records(0, 0, 1), start, None))
    full = list(ShardedJsonlDataset(ShardedTars(paths, shuffle=False), take_id, as_list, 2))
    resumed = ShardedJsonlDataset(ShardedTars(paths, shuffle=False), take_id, as_list, 2)
    resumed.set_position(0, 5)  # batch 5 of 8: samples 10.. in shard 2; shard 1 is never opened again
    paths[1].rename(paths[1].with_suffix(".gone"))
    assert list(resumed) == full[5:]
