"""Helpers to run launch.train as users do: in a subprocess, on small CIFAR-10 files."""

import pickle
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import REPO


def write_tiny_cifar(root):
    """The official python batches, 64 examples each (320 train, 64 test)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (64, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, 64).tolist()}, f)
    return str(root)


def command(data_dir, model_dir, *extra):
    return [sys.executable, "-m", "launch.train", "--flagfile=launch/cifar.flags", f"--data_dir={data_dir}",
            f"--model_dir={model_dir}", "--model=resnet20", "--batch_size=32", "--steps_per_loop=1",
            "--checkpoint_every_steps=4", "--noprogress", *extra]


def run(args, timeout=300):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)




def start_and_signal(args, marker, sig=signal.SIGKILL, timeout=240):
    """Starts `args`, waits for the file `marker` to appear, sends `sig`; returns the process, ended."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while not marker.exists():
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the run ended or stalled before {marker.name} appeared: "
                                     f"{proc.communicate()[1][-2000:] if proc.poll() is not None else ''}")
            time.sleep(0.1)
    finally:
        proc.send_signal(sig)
    proc.stdout_text, proc.stderr_text = proc.communicate(timeout=120)
    return proc
