import json
import socket

import pytest

from engine import distribution
from engine.distribution import Cluster, cluster_from_env_or_flags


def test_tf_config_is_read_and_the_chief_is_worker_0_without_a_chief_job():
    spec = {"worker": ["localhost:1001", "localhost:1002"]}
    env = {"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "worker", "index": 1}})}
    cluster = cluster_from_env_or_flags(environ=env)
    assert cluster.spec == spec and cluster.task_index == 1 and not cluster.is_chief
    assert Cluster(spec, "worker", 0).is_chief
    assert not Cluster({**spec, "chief": ["localhost:1003"]}, "worker", 0).is_chief


def test_flags_build_the_same_cluster():
    cluster = cluster_from_env_or_flags(worker_hosts=["a:1", "b:2"], ps_hosts=["c:3"], chief_host="d:4",
                                        task_type="ps", task_index=0, environ={})
    assert cluster.spec == {"worker": ["a:1", "b:2"], "ps": ["c:3"], "chief": ["d:4"]}
    assert cluster_from_env_or_flags(environ={}) is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(worker_hosts=["a:1"], task_type="worker", task_index=1), "task index 1 is out of range for 1 worker"),
    (dict(worker_hosts=["a:1"], task_type="ps", task_index=0), "task type 'ps' is not a job"),
    (dict(worker_hosts=["a:1", "a:1"], task_type="worker", task_index=0), "a:1 is given to more than one task"),
    (dict(worker_hosts=["a"], task_type="worker", task_index=0), "'a' is not host:port"),
    (dict(worker_hosts=["a:1"]), "needs task_type and task_index"),
    (dict(ps_hosts=["a:1"]), "need worker_hosts"),
])
def test_inconsistent_clusters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cluster_from_env_or_flags(environ={}, **kwargs)


def test_malformed_tf_config_is_refused():
    with pytest.raises(ValueError, match="TF_CONFIG is not of the form"):
        cluster_from_env_or_flags(environ={"TF_CONFIG": '{"cluster": {}}'})


def test_a_port_in_use_is_named():
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = Cluster({"worker": [f"localhost:{port}"]}, "worker", 0)
        with pytest.raises(ValueError, match=f"port {port} of worker 0 .* is already in use"):
            cluster.check_port_free()


def test_strategies_that_cannot_run_here_say_why():
    with pytest.raises(ValueError, match="needs a cluster"):
        distribution.create_strategy("multi_worker_mirrored")
    with pytest.raises(ValueError, match="needs ps tasks"):
        distribution.create_strategy("parameter_server", Cluster({"worker": ["localhost:1"]}, "worker", 0))
    with pytest.raises(ValueError, match="strategy=tpu: no TPU found here"):
        distribution.create_strategy("tpu")
    with pytest.raises(ValueError, match="'horovod' is not known"):
        distribution.create_strategy("horovod")


def test_gpu_selection_errors_name_the_flag():
    with pytest.raises(ValueError, match="visible_gpus='x'"):
        distribution.configure_gpus(visible="x")
    with pytest.raises(ValueError, match="no GPU 3"):
        distribution.configure_gpus(visible="3")
