"""The bench scripts' helpers: golden folder check, variants, the GPU script's FLOP formula against a counter."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str):
    """Import bench/<name>.py (the scripts import their neighbours by plain name)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_golden_folder_absent_is_a_clear_error(tmp_path):
    common = load("common")
    with pytest.raises(SystemExit, match="golden fixture folder"):
        common.golden_dir(None)
    with pytest.raises(SystemExit, match="missing.*tiny_state.pt"):
        common.golden_dir(tmp_path)


def test_variant_specs():
    step = load("pretrain_step")
    assert step.parse_variant("before@/old+bf16") == {"label": "before@/old+bf16", "root": "/old",
                                                      "precision": "bf16", "compile": False, "ckpt": False}
    assert step.parse_variant("now+ckpt+compile")["ckpt"] and step.parse_variant("now")["root"] is None
    with pytest.raises(SystemExit, match="unknown flag"):
        step.parse_variant("now+fp8")


def test_summary_and_table(capsys):
    common = load("common")
    assert common.summarize([3.0, 1.0, 2.0])["median"] == 2.0 and common.summarize([])["n"] == 0
    common.print_table([{"a": 1.23456, "b": None}], [("a", "A"), ("b", "B")])
    assert capsys.readouterr().out.splitlines()[-1].split() == ["1.235", "-"]


def test_swin_base_flops_match_the_published_figure():
    gpu = load("gpu_pretrain_step")
    from models.vision import load_vision_config

    # Swin-B at 224 px: 15.4 G multiply-accumulates per image (Liu et al. 2021, Table 1, "FLOPs").
    assert 15.2e9 < gpu.swin_macs(load_vision_config("swin_base_224")) < 15.6e9


@pytest.mark.parametrize("kind", ["image", "para", "region"])
def test_step_flop_formula_agrees_with_torch_flop_counter(kind):
    """The formula the GPU script divides by (MFU) against FlopCounterMode on a small model of the same structure."""
    gpu = load("gpu_pretrain_step")

    class Args:
        size, grad_checkpointing = "small", False

    torch.manual_seed(0)
    model, optimizer, vision, text = gpu.build(Args, torch.device("cpu"))
    shape = dict(vision=vision, d=text.hidden_size, f=text.intermediate_size, vocab=text.vocab_size,
                 text_layers=text.num_hidden_layers, fusion_start=model.text_encoder.fusion_layer, embed_dim=32)
    batch = gpu.make_batch(kind, 4, text.vocab_size, vision, torch.device("cpu"))
    counted = gpu.counted_flops(model, optimizer, batch, torch.device("cpu"))
    formula = gpu.train_step_flops(kind, 4, **shape)["total"]
    assert abs(counted / formula - 1) < 0.01


def test_attention_ops_bench_runs_and_writes_its_figures(tmp_path, capsys):
    import json

    ops = load("attention_ops")
    threads = torch.get_num_threads()
    try:
        assert ops.main(["--rounds", "1", "--threads", "1", "--json", str(tmp_path / "ops.json")]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets the process's thread count

    rows = json.loads((tmp_path / "ops.json").read_text())["rows"]
    assert len(rows) == 2 * len(ops.SHAPES) and all(r["stock_ms"] > 0 and r["fast_ops_ms"] > 0 for r in rows)
    assert "fast_ops ms" in capsys.readouterr().out


def test_gpu_script_runs_on_cpu_and_writes_its_profile(tmp_path, monkeypatch):
    """The one-shot GPU script end to end at the small size on CPU: a timed row and the profiled step's table."""
    import json

    gpu = load("gpu_pretrain_step")
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu.main(["--allow-cpu", "--size", "small", "--batches", "2", "--steps", "1", "--warmup", "1",
                     "--kinds", "image"]) == 0
    rows = json.loads((tmp_path / "gpu_pretrain_step.json").read_text())["rows"]
    assert rows[0]["status"] == "ok" and rows[0]["median_s"] > 0
    assert rows[-1]["profile"]["status"] == "ok"
    assert "aten::" in (tmp_path / "gpu_profile.txt").read_text()


def test_gpu_script_saves_each_row_as_it_goes(tmp_path, monkeypatch):
    """A run cut short (a device time limit) keeps the rows measured so far: the JSON is rewritten after each."""
    import json

    gpu = load("gpu_pretrain_step")
    monkeypatch.setenv("OUT", str(tmp_path))
    real, seen = gpu.measure_one, []

    def measure_then_stop(*args, **kwargs):
        if seen:  # the second measurement: what was saved before it started must hold the first row
            saved = json.loads((tmp_path / "gpu_pretrain_step.json").read_text())["rows"]
            seen.append([(r["batch"], r["status"]) for r in saved])
            raise KeyboardInterrupt  # stands in for the SIGTERM of a time limit (the script maps it to an exit)
        seen.append("first")
        return real(*args, **kwargs)

    monkeypatch.setattr(gpu, "measure_one", measure_then_stop)
    with pytest.raises(KeyboardInterrupt):
        gpu.main(["--allow-cpu", "--size", "small", "--batches", "2", "4", "--steps", "1", "--warmup", "1",
                  "--kinds", "image", "--no-profile"])
    assert seen[1] == [(2, "ok"), (4, "running")]
    final = json.loads((tmp_path / "gpu_pretrain_step.json").read_text())["rows"]  # written by the finally
    assert [(r["batch"], r["status"]) for r in final] == [(2, "ok"), (4, "running")]


def test_data_sources_gpu_estimate_follows_the_flop_formula():
    sources, gpu = load("data_sources"), load("gpu_pretrain_step")
    from models.vision import load_vision_config

    vision = load_vision_config("swin_base_224")
    flops = {k: gpu.train_step_flops(k, 64, vision, 1024, 4096, 250002, 12, 6)["total"] for k in ("image", "para",
                                                                                               "region")}
    estimate = sources.gpu_images_per_second(64, 0.5)
    seconds = (flops["para"] + (flops["image"] + flops["region"]) / 2) / (989.4e12 * 0.5)
    assert estimate["iteration_s"] == pytest.approx(seconds)
    assert estimate["images_per_s"] == pytest.approx((32 + gpu.region_images(64) / 2) / seconds)


@pytest.mark.slow
def test_data_sources_runs_on_a_local_s3_server(tmp_path, local_s3):
    """The whole script at toy sizes (its own S3 server; the session's fixture skips it where moto is absent)."""
    out = tmp_path / "data_sources.json"
    assert load("data_sources").main(["--samples", "24", "--shard-size", "8", "--batch", "4", "--batches", "1",
                                      "--rounds", "1", "--image-res", "64", "--source-size", "96",
                                      "--json", str(out)]) == 0
    result = __import__("json").loads(out.read_text())
    assert [row["source"] for row in result["rows"]] == ["jsonl + base64, local", "tar, local",
                                                         "tar, S3 (local moto server)"]
    assert all(row["images_per_s"] > 0 for row in result["rows"]) and result["rows"][0]["x_vs_jsonl"] == 1


@pytest.mark.slow  # four tiny run.py commands (about a minute)
def test_omp_wait_policy_bench_times_every_variant(tmp_path, capsys):
    out = tmp_path / "omp.json"
    assert load("omp_wait_policy").main(["--rounds", "1", "--loads", "none", "--workloads", "evaluate",
                                         "--json", str(out)]) == 0
    rows = __import__("json").loads(out.read_text())["rows"]
    assert [(r["workload"], r["load"]) for r in rows] == [("evaluate", "none")]
    assert [s["n"] for s in rows[0]["seconds"].values()] == [1, 1, 1]
    assert set(rows[0]["x_vs_default"]) == {"spin 10k", "PASSIVE"} and min(rows[0]["x_vs_default"].values()) > 0
    assert "PASSIVE x" in capsys.readouterr().out


def test_retrieval_bench_compares_with_the_reference_algorithm(tmp_path, capsys):
    """The retrieval bench on a tiny task model: every path's ranks match the reference algorithm's (exit 0)."""
    import json

    bench = load("retrieval_eval")
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--model", "configs/tiny/itr_multi30k.yaml", "--images", "6", "--texts-per-image", "3",
                           "--k-test", "4", "--threads", "1", "--bf16", "--json", str(tmp_path / "r.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["path"] for r in rows] == ["reference algorithm", "ours", "ours, bf16 fusion"]
    assert all(r["identical_up_to_ties"] for r in rows) and rows[2]["stats"]["dtype"] == "bfloat16"


def test_reference_scorer_gives_the_model_scores():
    """The bench's reference scorer (every fusion layer over every padded position, the memory per pair) gives the
    scores of the model's own fusion pass (which skips padding and shares keys/values)."""
    from tests.models.test_text_encoder import HIDDEN, make_encoder, padded_batch

    bench = load("retrieval_eval")
    model = torch.nn.Module()
    model.text_encoder, model.itm_head = make_encoder(), torch.nn.Linear(HIDDEN, 2)
    ids, atts = padded_batch()
    text = model.text_encoder(ids, atts, mode="text")
    memory, memory_atts = torch.randn(4, 5, HIDDEN), torch.ones(4, 5, dtype=torch.long)
    memory_atts[2, 3:] = 0
    fused = model.text_encoder(attention_mask=atts, encoder_embeds=text, encoder_hidden_states=memory,
                               encoder_attention_mask=memory_atts, mode="fusion")
    expected = model.itm_head(fused[:, 0])[:, 1]
    got = bench.reference_itm_logits(model)(memory, memory_atts, text, atts)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_api_overhead_bench_runs_and_writes_its_ratios(tmp_path, capsys):
    import json

    bench = load("api_overhead")
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--images", "6", "--queries", "6", "--batch", "4", "--rerank-k", "3", "--rounds", "1",
                           "--threads", "1", "--json", str(tmp_path / "api.json")]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets the process's thread count
    rows = json.loads((tmp_path / "api.json").read_text())["rows"]
    assert {(r["what"], r["path"]) for r in rows} == {
        ("images/tensors", "bare"), ("images/tensors", "api"), ("images/files", "bare"), ("images/files", "api"),
        ("images/files", "index"), ("queries", "bare"), ("queries", "api"), ("rank+rerank", "bare"),
        ("rank+rerank", "api")}
    assert all(r["ratio"] > 0 for r in rows) and "time / bare" in capsys.readouterr().out


def test_training_memory_bench_traces_rss_per_step(tmp_path, capsys, golden_dir):
    """The memory bench trains the golden model a few steps per precision in workers and reports RSS per step."""
    import json

    bench = load("training_memory")
    assert bench.main([str(golden_dir), "--steps", "3", "--warmup", "2", "--threads", "1",
                       "--json", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert [r["precision"] for r in result["rows"]] == ["fp32", "bf16"]
    assert all(len(trace) == 3 and min(trace) > 0 for trace in result["rss_by_step"].values())
    assert all(r["peak_mib"] > 0 and r["peak_vs_reference"] > 0 for r in result["rows"])
    assert "growth after step 2" in capsys.readouterr().out
