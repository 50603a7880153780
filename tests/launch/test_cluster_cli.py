"""launch.cluster: multi-worker and parameter-server runs on localhost, with resume."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from launch.cluster import cluster_spec
from tests.conftest import REPO
from tests.launch.cli import run

pytestmark = pytest.mark.slow


def _cluster(data_dir, model_dir, *extra, workers=2, ps=0):
    return [sys.executable, "-m", "launch.cluster", f"--num_workers={workers}", f"--num_ps={ps}", "--",
            "--flagfile=launch/cifar.flags", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
            "--model=resnet20", "--batch_size=16", "--steps_per_loop=2", "--checkpoint_every_steps=4",
            "--noprogress", *extra]


def test_two_workers_write_one_set_of_checkpoints_and_resume(tiny_cifar, tmp_path):
    model_dir = tmp_path / "mw"
    first = run(_cluster(tiny_cifar, model_dir, "--train_steps=12"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 replica(s), per-replica batch 16, global batch 32" in first.stderr
    # Summaries and progress come from the chief (worker 0) alone.
    assert "[worker 0] epoch 2/2 step 12:" in first.stderr and "[worker 1] epoch" not in first.stderr
    assert sorted(p for p in os.listdir(model_dir) if p.endswith(".index")) == \
        ["ckpt-10.index", "ckpt-12.index", "ckpt-8.index"]
    assert not (model_dir / ".scratch").exists()  # worker 1's saves were cleaned up
    assert len(os.listdir(model_dir / "train")) == 1 and len(os.listdir(model_dir / "eval")) == 1
    again = run(_cluster(tiny_cifar, model_dir, "--train_steps=16"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[worker 0] restored" in again.stderr and "resuming at step 12" in again.stderr
    assert (model_dir / "ckpt-16.index").exists()


def test_parameter_server_trains_checkpoints_and_resumes(tiny_cifar, tmp_path):
    model_dir = tmp_path / "ps"
    first = run(_cluster(tiny_cifar, model_dir, "--train_steps=12", ps=1))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[ps 0] ps 0 serving" in first.stderr and "[chief 0] epoch 1/1 step 12:" in first.stderr
    assert (model_dir / "ckpt-12.index").exists()
    again = run(_cluster(tiny_cifar, model_dir, "--train_steps=16", ps=1))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming at step 12" in again.stderr and (model_dir / "ckpt-16.index").exists()


def test_a_failing_task_stops_the_cluster(tiny_cifar, tmp_path):
    start = time.time()
    result = run(_cluster(tmp_path / "missing", tmp_path / "m", "--train_steps=4", ps=1), timeout=120)
    assert result.returncode != 0
    assert re.search(r"launch.cluster: (chief|worker|ps) \d exited with status 1; stopping the others", result.stderr)
    assert "--data_dir=" in result.stderr and time.time() - start < 100


@contextlib.contextmanager
def _two_workers(data_dir, model_dir, *extra):
    """Two multi_worker_mirrored launch.train processes without launch.cluster watching.

    Yields them once the chief has finished its first loop; kills what is left after.
    """
    spec = cluster_spec(2, 0)
    procs = []
    for index in range(2):
        config = {"cluster": spec, "task": {"type": "worker", "index": index}}
        args = [sys.executable, "-m", "launch.train", "--flagfile=launch/cifar.flags", f"--data_dir={data_dir}",
                f"--model_dir={model_dir}", "--model=resnet20", "--batch_size=16", "--steps_per_loop=1",
                "--epochs=1000", "--noprogress", "--strategy=multi_worker_mirrored", *extra]
        procs.append(subprocess.Popen(args, cwd=REPO, env=dict(os.environ, TF_CONFIG=json.dumps(config)),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 180
        while not (model_dir / "train").exists():
            assert time.time() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.2)
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_a_dead_worker_ends_the_other_with_an_error(tiny_cifar, tmp_path):
    """Without launch.cluster watching: the survivor's collective fails and it says so."""
    with _two_workers(tiny_cifar, tmp_path / "dead", "--collective_timeout_s=20") as procs:
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        stderr = procs[0].communicate(timeout=240)[1]
        assert procs[0].returncode != 0
        assert time.time() - killed_at < 200
    assert "launch.train: error: another task of the cluster failed or stopped answering" in stderr, stderr[-3000:]
    assert "rerun the job to resume from" in stderr


def test_sigterm_to_one_worker_checkpoints_all_at_one_step_and_exits_0(tiny_cifar, tmp_path):
    model_dir = tmp_path / "preempt"
    with _two_workers(tiny_cifar, model_dir, "--checkpoint_every_steps=1000") as procs:
        procs[1].send_signal(signal.SIGTERM)  # the non-chief is preempted
        outputs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    lines = [line for line in outputs[0].splitlines() if line.startswith("preempted: checkpoint")]
    assert len(lines) == 1, outputs[0][-3000:]
    step = int(lines[0].split("at step ")[1].split(";")[0])
    assert (model_dir / f"ckpt-{step}.index").exists() and step % 20 != 0  # mid-epoch, not an epoch-end save
