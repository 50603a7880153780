"""1 replica and 2 workers x 1 replica (multi_worker_mirrored on localhost) agree."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from launch.cluster import cluster_spec
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _start(out, task=None, spec=None, *extra):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    if task is not None:
        env["TF_CONFIG"] = json.dumps({"cluster": spec, "task": {"type": "worker", "index": task}})
    return subprocess.Popen([sys.executable, "-m", "tests.engine.multi_worker_script", str(out), *extra],
                            cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_workers_match_one_replica_step_by_step(tmp_path):
    spec = cluster_spec(2, 0)
    procs = [_start(tmp_path / "one.npz")] + [_start(tmp_path / "two.npz", i, spec) for i in range(2)]
    for proc in procs:
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output[-3000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=1e-5)
    weights = sorted(k for k in one.files if k.startswith("w"))
    assert len(weights) == 4
    for k in weights:
        np.testing.assert_allclose(one[k], two[k], rtol=1e-4, atol=1e-6)
    # Evaluation over 83 examples (5 global batches of 16 and 3 left): each counted once.
    assert float(one["count"]) == float(two["count"]) == 83
    assert float(two["eval_accuracy"]) == pytest.approx(float(one["eval_accuracy"]), rel=1e-5)
    assert float(two["eval_loss"]) == pytest.approx(float(one["eval_loss"]), rel=1e-5)


def test_two_workers_hold_the_same_batch_norm_state_and_their_checkpoint_evaluates_the_same(tmp_path):
    spec = cluster_spec(2, 0)
    procs = [_start(tmp_path / "bn", i, spec, str(tmp_path / "run")) for i in range(2)]
    for proc in procs:
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output[-3000:]
    chief, other = np.load(tmp_path / "bn.0.npz"), np.load(tmp_path / "bn.1.npz")
    state = sorted(k for k in chief.files if k.startswith("s"))
    assert len(state) == 3  # RunningMax's peak, moving_mean, moving_variance
    for k in state:  # Each worker's own copy, read in its own process.
        np.testing.assert_array_equal(chief[k], other[k])
    assert str(chief["checkpoint"]).endswith("ckpt-8")
    assert float(chief["restored_eval_loss"]) == pytest.approx(float(chief["eval_loss"]), rel=1e-5)
