"""Long runs against their environment: SIGTERM and Ctrl-C, full / over-quota / read-only disks, two runs on one
output or one cache, a cache written in another layout, a torchrun rank that dies."""

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import ENV, assert_same_selection, select_args, synthetic_pool, synthetic_target, write_jsonl

from influence_distillation import artifacts
from influence_distillation.cli import main
from influence_distillation.errors import OutputError
from influence_distillation.run import guards, shards
from influence_distillation.run.distributed import DistInfo
from influence_distillation.run.guards import FORMAT, Interrupted, output_lock, shard_claim
from influence_distillation.run.shards import RowCache, ShardedStage


def _long_run(tmp_path, model_dir, name):
    pool = write_jsonl(tmp_path / "pool.jsonl", synthetic_pool(300))
    target = write_jsonl(tmp_path / "target.jsonl", synthetic_target(4))
    return pool, target, select_args(pool, target, model_dir("llama"), tmp_path / name, 20, "--shard-rows", "2")


def _wait_for_shards(folder, process, count, pattern="embeddings-*/shard-*.npy"):
    deadline = time.time() + 120
    while len(list(folder.glob(pattern))) < count and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    if process.poll() is not None:
        pytest.fail("the run finished before it could be interrupted; make it longer")


def _same_as_fresh(tmp_path, model_dir, pool, target, out, exactly=True):
    fresh = subprocess.run([sys.executable, "-m", "influence_distillation",
                            *select_args(pool, target, model_dir("llama"), tmp_path / "fresh", 20, "--shard-rows",
                                         "2")], env=ENV, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    if exactly:
        assert (out / "selected.jsonl").read_bytes() == (tmp_path / "fresh" / "selected.jsonl").read_bytes()
    else:  # ranks sum floats with their own thread counts: the same samples, scores equal to float32 rounding
        assert_same_selection((out / "selected.jsonl").read_text(), (tmp_path / "fresh" / "selected.jsonl").read_text())


@pytest.mark.slow
def test_sigterm_mid_stage_says_where_exits_143_and_the_rerun_equals_a_fresh_run(model_dir, tmp_path):
    pool, target, args = _long_run(tmp_path, model_dir, "stopped")
    process = subprocess.Popen([sys.executable, "-m", "influence_distillation", *args], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_shards(tmp_path / "stopped" / "stages", process, 5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    last = err.strip().splitlines()[-1]
    assert process.returncode == 143, err[-2000:]
    assert last.startswith("influence-distill: interrupted during embeddings after ") and \
        "of 150 shards; rerun the same command to resume" in last, last
    assert not (tmp_path / "stopped" / "manifest.json").exists()
    assert not list((tmp_path / "stopped" / "stages").glob("*/.*.npy.*.tmp"))  # the shard in progress was dropped
    resumed = subprocess.run([sys.executable, "-m", "influence_distillation", *args], env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_as_fresh(tmp_path, model_dir, pool, target, tmp_path / "stopped")


def _signal_inside_c_code(replaced_by: Exception | None):
    """A SIGINT whose exception code around it replaces (numpy's `tofile` raised its own TypeError for a SIGTERM
    that arrived while it flushed) or eats whole (a finaliser, whose errors Python only prints, or code that ignores
    errors: `replaced_by` None)."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler runs before this ends
    except Interrupted:
        if replaced_by is not None:
            raise replaced_by from None


def test_a_signal_at_any_instant_of_a_write_leaves_no_temporary_behind(tmp_path):
    """2,000 one-shot timers, each firing at a random instant of atomic writes (a file, an array, a folder): the
    exception the signal raises may land while a temporary is being created, and its cleanup must know its name.
    (tempfile's mkstemp, used before, named the file only after creating it: a few in a hundred signals left one.)"""
    class Arrived(BaseException):
        pass

    def arrive(signum, frame):
        arrived.append(signum)
        raise Arrived

    rng, previous, finished = np.random.default_rng(0), signal.signal(signal.SIGALRM, arrive), 0
    try:
        for _ in range(2000):
            arrived = []
            try:
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 2e-3))
                while not arrived:  # a signal eaten whole (it landed in a finaliser) must not loop forever
                    artifacts.write_json(tmp_path / "a.json", {})
                    artifacts.write_npy(tmp_path / "b.npy", np.zeros(3))
                    with artifacts.atomic_directory(tmp_path / "c"):
                        pass
                    finished += 1
            except BaseException:  # C code (numpy's tofile, rmtree's close) may replace the signal's exception by
                if not arrived:    # its own, as signals_interrupt knows; anything else is a failure
                    raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert finished > 100  # the signals also land in later writes, over finished files
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("arrives", ["raised", "swallowed", "lost"])
def test_an_interruption_is_reported_with_its_stage_and_progress(arrives, model_dir, data_files, tmp_path, capsys,
                                                                monkeypatch):
    """In process: a signal inside a shard names the stage and its shards, also where C code replaced its exception
    (CI saw a SIGTERM during a shard's write end as numpy's TypeError, exit 1), or ate it whole (the run must still
    stop before the next shard)."""
    pool, target = data_files
    calls = []

    def interrupted_on_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            if arrives == "raised":
                raise Interrupted(signal.SIGINT)
            _signal_inside_c_code(TypeError("expected str, bytes or os.PathLike object, not BufferedWriter")
                                  if arrives == "swallowed" else None)
        return real(self, *args, **kwargs)

    real = ShardedStage._compute_shard
    monkeypatch.setattr(ShardedStage, "_compute_shard", interrupted_on_third)
    code = main(select_args(pool, target, model_dir("llama"), tmp_path / "run", 5, "--shard-rows", "5"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 130 and err == ("influence-distill: interrupted during embeddings after 2 of 8 shards; rerun the "
                                   "same command to resume (no output was marked complete)")
    monkeypatch.setattr(ShardedStage, "_compute_shard", real)
    assert main(select_args(pool, target, model_dir("llama"), tmp_path / "run", 5, "--shard-rows", "5")) == 0


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "quota is exceeded"),
                                         (errno.EROFS, "read-only")])
def test_a_disk_that_refuses_a_shard_names_the_path_and_the_space_needed(code, words, model_dir, data_files,
                                                                         tmp_path, capsys, monkeypatch):
    pool, target = data_files
    written = []

    def refuse_after_two(path, array):
        if path.name.startswith("shard-"):
            if len(written) == 2:
                raise OSError(code, os.strerror(code))
            written.append(path)
        real_write(path, array)

    real_write = shards.write_npy
    monkeypatch.setattr(shards, "write_npy", refuse_after_two)
    out = tmp_path / "run"
    assert main(select_args(pool, target, model_dir("llama"), out, 5, "--shard-rows", "5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "shard-000002.npy" in err[0] and "KiB more" in err[0], err
    assert "2 finished shards are kept" in err[0] and not (out / "manifest.json").exists()
    monkeypatch.setattr(shards, "write_npy", real_write)  # space freed: the rerun completes and equals a fresh run
    assert main(select_args(pool, target, model_dir("llama"), out, 5, "--shard-rows", "5")) == 0
    assert main(select_args(pool, target, model_dir("llama"), tmp_path / "fresh", 5, "--shard-rows", "5")) == 0
    assert (out / "selected.jsonl").read_bytes() == (tmp_path / "fresh" / "selected.jsonl").read_bytes()


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (where this machine lets the tests mount one), grown in place by calling the fixture's value."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root); the injected ENOSPC tests cover the logic")
    try:
        yield folder, lambda size: subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_real_disk_filled_mid_stage_then_grown_resumes_to_a_fresh_runs_selection(small_disk, model_dir, tmp_path,
                                                                                  capsys):
    folder, grow = small_disk
    pool = write_jsonl(tmp_path / "pool.jsonl", synthetic_pool(300))
    target = write_jsonl(tmp_path / "target.jsonl", synthetic_target(4))
    args = select_args(pool, target, model_dir("llama"), tmp_path / "run", 20, "--shard-rows", "10",
                       "--cache-dir", str(folder))
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the disk is full" in err[0] and str(folder) in err[0] and "finished shards are kept" \
        in err[0], err
    finished = sorted(p.name for p in folder.glob("embeddings-*/shard-*.npy"))
    assert finished and all(np.load(next(folder.glob(f"embeddings-*/{name}"))).shape[0] == 10 for name in finished)
    grow("16m")
    assert main(args) == 0
    fresh = select_args(pool, target, model_dir("llama"), tmp_path / "fresh", 20, "--shard-rows", "10")
    assert main(fresh) == 0
    assert (tmp_path / "run" / "selected.jsonl").read_bytes() == (tmp_path / "fresh" / "selected.jsonl").read_bytes()


def test_a_full_disk_while_writing_the_outputs_is_one_line_naming_the_file(model_dir, data_files, tmp_path, capsys,
                                                                          monkeypatch):
    from influence_distillation import artifacts

    pool, target = data_files
    real = artifacts.os.fsync

    def full(fd):
        if "selected.jsonl" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(artifacts.os, "fsync", full)
    out = tmp_path / "run"
    assert main(select_args(pool, target, model_dir("llama"), out, 5)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "selected.jsonl: the disk is full" in err[0], err
    assert not (out / "manifest.json").exists() and not list(out.glob(".selected.jsonl*"))
    monkeypatch.setattr(artifacts.os, "fsync", real)
    assert main(select_args(pool, target, model_dir("llama"), out, 5)) == 0


def test_a_second_run_on_the_same_out_refuses_at_once_naming_the_first(model_dir, data_files, tmp_path, capsys):
    pool, target = data_files
    out = tmp_path / "run"
    with output_lock(out):  # another run holds --out (its lock is this process's)
        assert main(select_args(pool, target, model_dir("llama"), out, 5)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--out {out} is in use by process {os.getpid()} on " in err and "choose another --out" in err
    assert main(select_args(pool, target, model_dir("llama"), out, 5)) == 0  # released: the run goes ahead
    (tmp_path / "a-file").write_text("x")
    assert main(select_args(pool, target, model_dir("llama"), tmp_path / "a-file", 5)) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "a-file").read_text() == "x"


def test_a_lock_left_by_a_killed_run_is_taken_over(model_dir, data_files, tmp_path, caplog):
    pool, target = data_files
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": "h", "since": 0}))  # no flock held
    caplog.set_level("INFO")
    assert main(select_args(pool, target, model_dir("llama"), out, 5)) == 0
    assert f"taking over the lock left by process {int(dead.stdout)} on h" in caplog.text
    assert (out / ".lock").read_text() == ""  # a clean exit leaves nothing to take over


def test_two_runs_on_one_cache_never_compute_the_same_shard(tmp_path):
    """A shard another process is writing is left to it and waited for; the stage is whole either way."""
    full = np.arange(40, dtype=np.float32).reshape(20, 2)
    store = ShardedStage(tmp_path / "stage", 20, 4, {"stage": "test"})
    computed = []

    def rows(part):
        computed.append(part[0] // 4)
        return torch.from_numpy(full[part])

    store.folder.mkdir(parents=True)
    held = threading.Event()
    release = threading.Event()

    def other_run():  # holds shard 1 for a while, then writes it
        with shard_claim(store.path(1), wait=True):
            held.set()
            release.wait(10)
            shards.write_npy(store.path(1), full[4:8])

    thread = threading.Thread(target=other_run)
    thread.start()
    held.wait(10)
    threading.Timer(0.3, release.set).start()
    store.compute(DistInfo(), rows, "test", progress=False)
    thread.join()
    assert sorted(computed) == [0, 2, 3, 4] and np.array_equal(store.load().numpy(), full)


def test_caches_in_another_layout_are_refused_with_the_folder_to_delete(tmp_path):
    store = ShardedStage(tmp_path / "stage", 8, 4, {"stage": "test"})
    store.compute(DistInfo(), lambda part: torch.zeros(len(part), 2), "test", progress=False)
    assert json.loads((store.folder / "stage.json").read_text())["format"] == FORMAT
    description = json.loads((store.folder / "stage.json").read_text())
    (store.folder / "stage.json").write_text(json.dumps({**description, "format": FORMAT - 1}))
    with pytest.raises(OutputError, match=f"the stage cache {store.folder} was written by another version.*delete"):
        store.compute(DistInfo(), lambda part: torch.zeros(len(part), 2), "test", progress=False)
    rows = tmp_path / "rows"
    RowCache(rows).add([b"a" * 16], np.ones((1, 2), dtype=np.float32))
    (rows / "format.json").unlink()  # a row cache from before the layout was recorded
    with pytest.raises(OutputError, match=f"the row cache {rows} was written by another version"):
        RowCache(rows)


def test_the_cache_key_holds_the_layout_and_torch_version(tmp_path):
    from influence_distillation.config import SelectConfig
    from influence_distillation.run.context import cache_basis

    pool = write_jsonl(tmp_path / "pool.jsonl", synthetic_pool(3))
    config = SelectConfig(pool=str(pool), target=str(pool), out=str(tmp_path / "o"))
    config.model.path = str(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    basis = cache_basis(config)
    assert basis["format"] == guards.FORMAT and basis["torch"] == torch.__version__


@pytest.mark.slow
def test_a_torchrun_rank_killed_mid_stage_stops_every_rank_and_the_rerun_resumes(model_dir, tmp_path):
    pool, target, args = _long_run(tmp_path, model_dir, "ranks")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "influence_distillation", *args]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_shards(tmp_path / "ranks" / "stages", process, 6)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[1]), signal.SIGKILL)
    start = time.time()
    process.communicate(timeout=120)
    assert process.returncode != 0 and time.time() - start < 60
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)
    assert not (tmp_path / "ranks" / "manifest.json").exists()
    resumed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_as_fresh(tmp_path, model_dir, pool, target, tmp_path / "ranks", exactly=False)
