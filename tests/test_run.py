"""run.py: the launch command for every --dist form, and exit codes of failing workers."""
import sys

import pytest

import run
from tasks.registry import TaskInfo


def dry(capsys, *argv):
    assert run.main([*argv, "--dry-run"]) == 0
    return capsys.readouterr().out.strip()


def test_multinode_command_from_flags(capsys):
    out = dry(capsys, "--task", "itr_coco", "--dist", "all", "--nnodes", "2", "--node_rank", "1",
              "--master_addr", "10.1.2.3", "--master_port", "29600")
    assert out.count("-m utils.launch") == 1
    assert "--nproc-per-node=8 --nnodes=2 --node-rank=1 --master-addr=10.1.2.3 --master-port=29600" in out
    assert "Retrieval.py --task itr_coco --config configs/retrieval/coco_all.yaml" in out


def test_multinode_nproc_override_and_env_fallback(capsys):
    out = dry(capsys, "--task", "itr_coco", "--dist", "all", "--nproc", "4")
    assert "--nproc-per-node=4" in out and "--nnodes" not in out  # torchrun reads PET_* from the environment


@pytest.mark.parametrize("dist,expect", [
    ("cpu", ["CCLM_DEVICE=cpu", "--standalone", "--nproc-per-node=1"]),
    ("cpu:3", ["CCLM_DEVICE=cpu", "--nproc-per-node=3"]),
    ("gpu5", ["CUDA_VISIBLE_DEVICES=5", "--nproc-per-node=1"]),
    ("f4", ["CUDA_VISIBLE_DEVICES=0,1,2,3", "--nproc-per-node=4"]),
    ("l4", ["CUDA_VISIBLE_DEVICES=4,5,6,7", "--nproc-per-node=4"]),
])
def test_single_node_forms(capsys, dist, expect):
    out = dry(capsys, "--task", "xvnli", "--dist", dist)
    for piece in expect:
        assert piece in out


def test_dist_1_uses_local_gpus_or_eight(capsys, monkeypatch):
    monkeypatch.setattr(run, "_local_gpu_count", lambda: 0)
    assert "--nproc-per-node=8" in dry(capsys, "--task", "nlvr", "--dist", "1")
    monkeypatch.setattr(run, "_local_gpu_count", lambda: 2)
    assert "--nproc-per-node=2" in dry(capsys, "--task", "nlvr", "--dist", "1")


def test_flags_are_forwarded_and_fewshot_picks_its_config(capsys, tmp_path):
    out = dry(capsys, "--task", "xvnli", "--dist", "cpu", "--fewshot", "ar,48", "--bs", "64", "--seed", "3",
              "--epoch", "2", "--lr", "1e-5", "--evaluate", "--resume", "latest", "--output_dir", str(tmp_path),
              "--opts", "a.b=1", "c=2")
    assert "--config configs/xvnli/xvnli_fewshot.yaml" in out
    for piece in ("--bs 64", "--seed 3", "--epoch 2", "--lr 1e-05", "--fewshot ar,48", "--evaluate",
                  "--resume latest", f"--output_dir {tmp_path}", "--opts a.b=1 c=2"):
        assert piece in out


@pytest.mark.parametrize("dist,says", [("gpu", "'gpu' is not one of"), ("cpu:0", "expected cpu:N with N >= 1"),
                                       ("cpu:x", "expected cpu:N")])
def test_a_bad_dist_value_is_one_line_and_exit_code_2(capsys, dist, says):
    assert run.main(["--task", "xvnli", "--dist", dist, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and err.startswith("run.py: --dist")


def test_unknown_task_is_rejected(capsys):
    with pytest.raises(SystemExit):
        run.main(["--task", "nope", "--dry-run"])


def test_missing_script_says_so(monkeypatch, capsys):
    monkeypatch.setitem(run.TASKS, "ghost", TaskInfo("ghost", "Ghost.py", "configs/none.yaml", "s.yaml", "ghost"))
    assert run.main(["--task", "ghost", "--dist", "cpu"]) == 2
    assert "Ghost.py does not exist" in capsys.readouterr().err


def register_script(monkeypatch, tmp_path, task: str, source: str) -> None:
    """Register ``task``: a script of ``source`` with an empty config, for run.py to launch."""
    script = tmp_path / f"{task}.py"
    script.write_text(source)
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    monkeypatch.setitem(run.TASKS, task, TaskInfo("t", str(script), str(config), "s.yaml", "t"))


def test_a_failing_worker_passes_its_exit_code_without_a_launcher_traceback(monkeypatch, tmp_path, capfd):
    register_script(monkeypatch, tmp_path, "failing",
                    "import os, sys\nsys.exit(5 if os.environ['RANK'] == '1' else 0)\n")
    assert run.main(["--task", "failing", "--dist", "cpu:2"]) == 5
    err = capfd.readouterr().err
    assert "failed on rank 1 with exit code 5" in err and "Traceback" not in err


def test_a_succeeding_worker_exits_zero(monkeypatch, tmp_path):
    register_script(monkeypatch, tmp_path, "fine", "import sys\nassert '--config' in sys.argv\n")
    assert run.main(["--task", "fine", "--dist", "cpu:2"]) == 0


def test_a_bad_stop_grace_is_one_line_and_exit_code_2(monkeypatch, tmp_path, capfd):
    register_script(monkeypatch, tmp_path, "graceless", "raise SystemExit(9)\n")
    monkeypatch.setenv("CCLM_STOP_GRACE_SECONDS", "soon")
    assert run.main(["--task", "graceless", "--dist", "cpu"]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert err == ["launch: CCLM_STOP_GRACE_SECONDS='soon': expected a whole number of seconds "
                   "(e.g. CCLM_STOP_GRACE_SECONDS=300)"]


@pytest.mark.parametrize("user_env", ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"])
def test_workers_spin_briefly_before_sleeping_unless_the_user_chose(capsys, monkeypatch, user_env):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert "GOMP_SPINCOUNT=10000" in dry(capsys, "--task", "xvnli", "--dist", "cpu")
    monkeypatch.setenv(user_env, "PASSIVE" if user_env == "OMP_WAIT_POLICY" else "300000")
    out = dry(capsys, "--task", "xvnli", "--dist", "cpu")
    assert "GOMP_SPINCOUNT" not in out and "OMP_WAIT_POLICY" not in out  # the user's setting is inherited as it is


def test_gmt_is_forwarded(capsys):
    out = dry(capsys, "--task", "xflickrco", "--dist", "cpu", "--gmt", "--evaluate")
    assert "--gmt" in out and "--config configs/xflickrco/xflickrco.yaml" in out
    assert "--gmt" not in dry(capsys, "--task", "xflickrco", "--dist", "cpu")


def test_nlvr_domain_runs_the_domain_script_with_its_config(capsys):
    out = dry(capsys, "--task", "nlvr_domain", "--dist", "cpu", "--checkpoint", "/ckpt/cclm.th", "--fewshot", "id")
    assert "NLVR_pretrain.py --task nlvr_domain --config configs/nlvr/nlvr_domain.yaml" in out
    assert "--checkpoint /ckpt/cclm.th" in out and "--fewshot id" in out  # phase 2 takes --fewshot from the script


def test_without_dist_a_run_uses_every_gpu_or_else_the_cpu(capsys, monkeypatch):
    monkeypatch.setattr(run, "_local_gpu_count", lambda: 2)
    out = dry(capsys, "--task", "xvnli")
    assert "--nproc-per-node=2" in out and "CCLM_DEVICE" not in out
    monkeypatch.setattr(run, "_local_gpu_count", lambda: 0)
    out = dry(capsys, "--task", "xvnli")
    assert "CCLM_DEVICE=cpu" in out and "--nproc-per-node=1" in out


def test_every_task_flag_is_accepted_and_passed_on(capsys, tmp_path):
    from tasks.cli import FLAGS

    values = {"--bs": "8", "--seed": "3", "--epoch": "2", "--lr": "0.5", "--device": "cpu", "--opts": "a=1",
              "--resume": "latest"}
    argv = []
    for flag in FLAGS:
        argv += [flag.name] if flag.is_switch else [flag.name, values.get(flag.name, str(tmp_path / flag.dest))]
    out = dry(capsys, "--task", "xflickrco", "--dist", "cpu", *argv)
    for flag in FLAGS:
        assert f" {flag.name}" in out, flag.name


def test_task_help_shows_the_task_and_its_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        run.main(["--task", "gqa", "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "task gqa: xGQA visual question answering" in out and "configs/gqa/gqa_fewshot.yaml" in out
    assert "--fewshot FEWSHOT" in out and "few-shot spec" in out and "exact-match accuracy" in out.lower()
