"""Starts a local multi-worker cluster of launch.train processes on localhost ports.

    python -m launch.cluster --num_workers=2 -- --flagfile=launch/cifar.flags --data_dir=...
    python -m launch.cluster --num_workers=2 --num_ps=1 -- --flagfile=launch/cifar.flags ...

Without --num_ps every process is a worker of multi_worker_mirrored training (worker
0 is the chief). With --num_ps the cluster also has a chief, the coordinator of
parameter_server training, and the ps tasks. Each process gets its TF_CONFIG;
its output lines are prefixed with its task; the first task to fail stops the
others and its exit status becomes this command's. It is for trying and testing
multi-worker runs on one machine: on a real cluster, set TF_CONFIG (or the
--worker_hosts/--task_type/--task_index flags) on each machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

flags.DEFINE_integer("num_workers", 2, "Worker processes.", lower_bound=1)
flags.DEFINE_integer("num_ps", 0, "Parameter-server processes; > 0 selects parameter_server training.",
                     lower_bound=0)
FLAGS = flags.FLAGS


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (bound then released by the OS's choice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_spec(num_workers: int, num_ps: int) -> dict[str, list[str]]:
    """A localhost cluster: workers (and a chief and ps tasks for parameter-server training)."""
    ports = iter(free_ports(num_workers + num_ps + (1 if num_ps else 0)))
    spec = {"worker": [f"localhost:{next(ports)}" for _ in range(num_workers)]}
    if num_ps:
        spec["chief"] = [f"localhost:{next(ports)}"]
        spec["ps"] = [f"localhost:{next(ports)}" for _ in range(num_ps)]
    return spec


def _pump(stream, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        sys.stderr.write(f"[{prefix}] {line}")
    stream.close()


def run_cluster(train_args: list[str], num_workers: int, num_ps: int) -> int:
    """Runs the cluster to its end; returns the exit status (0 if all trainers succeeded).

    The trainers are the workers (multi_worker_mirrored) or the chief (parameter
    server); ps tasks and parameter-server workers serve until the chief is done.
    """
    spec = cluster_spec(num_workers, num_ps)
    strategy = "parameter_server" if num_ps else "multi_worker_mirrored"
    tasks = [(job, i) for job in ("chief", "worker", "ps") for i in range(len(spec.get(job, [])))]
    procs = {}
    for job, index in tasks:
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": spec, "task": {"type": job, "index": index}}),
                   PYTHONUNBUFFERED="1")
        procs[(job, index)] = proc = subprocess.Popen(
            [sys.executable, "-m", "launch.train", *train_args, f"--strategy={strategy}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=_pump, args=(proc.stdout, f"{job} {index}"), daemon=True).start()
    trainers = [t for t in tasks if (t[0] == "chief") == bool(num_ps) and t[0] != "ps"]
    status = 0
    try:
        while True:
            failed = [(t, p.returncode) for t, p in procs.items() if p.poll() not in (None, 0)]
            if failed:
                (job, index), status = failed[0]
                sys.stderr.write(f"launch.cluster: {job} {index} exited with status {status}; stopping the others\n")
                break
            if all(procs[t].poll() == 0 for t in trainers):
                break
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return status


def main(argv: list[str]) -> None:
    sys.exit(run_cluster(argv[1:], FLAGS.num_workers, FLAGS.num_ps))


if __name__ == "__main__":
    app.run(main)
