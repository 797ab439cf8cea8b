"""torchrun sharding and kill-and-resume, through real subprocesses on CPU (gloo)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ENV, assert_same_selection, select_args, synthetic_pool, synthetic_target, torchrun, write_jsonl


@pytest.mark.slow
def test_one_two_and_three_ranks_select_the_same(model_dir, data_files, tmp_path):
    pool, target = data_files
    outputs = {}
    for ranks in (1, 2, 3):
        out = tmp_path / f"ranks{ranks}"
        result = torchrun(ranks, select_args(pool, target, model_dir("llama"), out, 8, "--shard-rows", "5"))
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[ranks] = (out / "selected.jsonl").read_text()
        shards = sorted((out / "stages").glob("*/shard-*.npy"))
        assert len([p for p in shards if "embeddings" in str(p)]) == 8  # 36 samples in shards of 5
        printed = result.stdout.strip().splitlines()
        assert len(printed) == 3 and printed[0].startswith("selected 8 of 36")  # only rank 0 reports
    assert_same_selection(outputs[1], outputs[2])
    assert_same_selection(outputs[1], outputs[3])




@pytest.mark.slow
def test_a_killed_run_resumes_from_its_shards_and_gives_the_same_selection(model_dir, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", synthetic_pool(300))
    target = write_jsonl(tmp_path / "target.jsonl", synthetic_target(4))
    args = select_args(pool, target, model_dir("llama"), tmp_path / "killed", 20, "--shard-rows", "2")
    process = subprocess.Popen([sys.executable, "-m", "influence_distillation", *args], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stages = tmp_path / "killed" / "stages"
    deadline = time.time() + 120
    while len(list(stages.glob("embeddings-*/shard-*.npy"))) < 10 and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    if process.poll() is not None:
        pytest.fail("the run finished before it could be killed; make it longer")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    # A kill can leave a hidden temporary (`.name.XXXX.tmp`), never a half-written file under a final name:
    # every final file loads whole, and a row cache's values and digests agree row for row.
    for final in stages.glob("*/[!.]*.npy"):
        np.load(final)
    for digests in stages.glob("*/*.digests.npy"):
        assert len(np.load(digests)) == len(np.load(digests.with_name(digests.name.replace(".digests.", ".values."))))
    done_before = len(list(stages.glob("*/shard-*.npy")))
    loud = [a for a in args if a != "--quiet"]  # the resume is logged
    resumed = subprocess.run([sys.executable, "-m", "influence_distillation", *loud], env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr and done_before >= 10
    fresh = subprocess.run([sys.executable, "-m", "influence_distillation",
                            *select_args(pool, target, model_dir("llama"), tmp_path / "fresh", 20, "--shard-rows",
                                         "2")], env=ENV, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert (tmp_path / "killed" / "selected.jsonl").read_bytes() == (tmp_path / "fresh" / "selected.jsonl").read_bytes()


@pytest.mark.slow
def test_verification_under_torchrun_selects_as_one_process(model_dir, data_files, tmp_path):
    pool, target = data_files
    outputs = []
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}"
        result = torchrun(ranks, select_args(pool, target, model_dir("llama"), out, 8, "--verify", "-1",
                                             "--shard-rows", "3"))
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append((out / "selected.jsonl").read_text())
    assert_same_selection(outputs[0], outputs[1])
