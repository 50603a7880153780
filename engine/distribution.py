"""Choosing a tf.distribute strategy by name; the cluster from TF_CONFIG or flags.

Every strategy here is tf.distribute's own: MirroredStrategy on one machine,
MultiWorkerMirroredStrategy (collective all-reduce) and ParameterServerStrategy
across machines, TPUStrategy on TPUs. This module only resolves which one, and the
cluster it runs on, in one place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import tensorflow as tf

from engine.errors import UserError

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu")
MULTI_WORKER = ("multi_worker_mirrored", "parameter_server")


def configure_cpu_devices(num_devices: int) -> None:
    """Splits the host CPU into `num_devices` logical devices.

    MirroredStrategy over several logical CPU devices runs multi-replica code on a
    machine without accelerators (for tests and trials; it is not faster).

    Args:
      num_devices: number of logical CPU devices, >= 1. 1 leaves TF's default.

    Raises:
      ValueError: if num_devices < 1.
      RuntimeError: if TensorFlow has already initialised its devices with a
        different split (this must run before the first op).
    """
    if num_devices < 1:
        raise UserError(f"num_cpu_devices={num_devices} must be at least 1")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if num_devices == 1 and not current:
        return
    if current and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError as e:
        raise RuntimeError(
            f"cannot split the CPU into {num_devices} logical devices: TensorFlow has already "
            f"initialised its devices ({e}); call configure_cpu_devices first") from e


def configure_gpus(*, memory_growth: bool = False, visible: str | None = None) -> None:
    """GPU settings from the tutorials; must run before TensorFlow initialises devices.

    Args:
      memory_growth: allocate GPU memory as needed instead of all at start.
      visible: comma-separated GPU indices to use (e.g. "0,2"); None or "" for all.

    Raises:
      ValueError: if an index is not an integer or there is no such GPU.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if visible:
        try:
            indices = [int(i) for i in visible.split(",")]
        except ValueError:
            raise UserError(f"visible_gpus={visible!r} must be comma-separated GPU indices") from None
        bad = [i for i in indices if not 0 <= i < len(gpus)]
        if bad:
            raise UserError(f"visible_gpus={visible}: no GPU {bad[0]} (this machine has {len(gpus)})")
        gpus = [gpus[i] for i in indices]
        tf.config.set_visible_devices(gpus, "GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, memory_growth)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A multi-worker cluster: its spec and this process's task.

    Attributes:
      spec: job name ("chief", "worker", "ps", "evaluator") to "host:port" lists.
      task_type: this process's job.
      task_index: this process's index in its job.
    """

    spec: dict[str, list[str]]
    task_type: str
    task_index: int

    def __post_init__(self):
        if not self.spec.get("worker"):
            raise UserError(f"the cluster has no workers: {json.dumps(self.spec)}")
        if self.task_type not in self.spec:
            raise UserError(f"task type {self.task_type!r} is not a job of the cluster {sorted(self.spec)}")
        size = len(self.spec[self.task_type])
        if not 0 <= self.task_index < size:
            raise UserError(f"task index {self.task_index} is out of range for {size} {self.task_type} task(s)")
        addresses = [a for hosts in self.spec.values() for a in hosts]
        for address in addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise UserError(f"cluster address {address!r} is not host:port")
        duplicates = {a for a in addresses if addresses.count(a) > 1}
        if duplicates:
            raise UserError(f"cluster address {sorted(duplicates)[0]} is given to more than one task")

    @property
    def address(self) -> str:
        return self.spec[self.task_type][self.task_index]

    @property
    def is_chief(self) -> bool:
        """The chief: task "chief", or worker 0 when the cluster has no chief."""
        if "chief" in self.spec:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    def resolver(self) -> tf.distribute.cluster_resolver.ClusterResolver:
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(self.spec), task_type=self.task_type, task_id=self.task_index, rpc_layer="grpc")

    def check_port_free(self) -> None:
        """Raises ValueError if this task's port is already in use on this machine."""
        host, _, port = self.address.rpartition(":")
        if host not in ("localhost", "127.0.0.1", "0.0.0.0", socket.gethostname()):
            return  # Another machine's address: nothing to check from here.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", int(port)))
            except OSError:
                raise UserError(f"port {port} of {self.task_type} {self.task_index} ({self.address}) "
                                 "is already in use") from None


def cluster_from_env_or_flags(*, worker_hosts=None, ps_hosts=None, chief_host=None, task_type=None,
                              task_index=None, environ=os.environ) -> Cluster | None:
    """The cluster from TF_CONFIG, or else from flags; None when neither gives one.

    Args:
      worker_hosts, ps_hosts: lists of "host:port" (flags --worker_hosts, --ps_hosts).
      chief_host: "host:port" of a separate chief (coordinator), or None.
      task_type, task_index: this process's task (flags --task_type, --task_index).
      environ: where to read TF_CONFIG from.

    Raises:
      ValueError: TF_CONFIG is not valid JSON or lacks cluster/task, flags name
        hosts without a task, or the spec is inconsistent (see Cluster).
    """
    raw = environ.get("TF_CONFIG")
    if raw:
        try:
            config = json.loads(raw)
            spec, task = config["cluster"], config["task"]
            return Cluster({k: list(v) for k, v in spec.items()}, task["type"], int(task["index"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"TF_CONFIG is not of the form {{'cluster': {{...}}, 'task': {{'type', 'index'}}}} "
                             f"({type(e).__name__}: {e})") from None
    if not worker_hosts:
        if task_type is not None or ps_hosts:
            raise UserError("task_type/ps_hosts need worker_hosts (or TF_CONFIG)")
        return None
    if task_type is None or task_index is None:
        raise UserError("worker_hosts needs task_type and task_index for this process")
    spec = {"worker": list(worker_hosts)}
    if ps_hosts:
        spec["ps"] = list(ps_hosts)
    if chief_host:
        spec["chief"] = [chief_host]
    return Cluster(spec, task_type, int(task_index))


def create_strategy(name: str, cluster: Cluster | None = None, *,
                    collective_timeout_s: float | None = None) -> tf.distribute.Strategy:
    """Creates a distribution strategy by name.

    Args:
      name: "default" (no distribution), "one_device" (the first GPU, else the
        CPU), "mirrored" (all GPUs, else all logical CPU devices; see
        configure_cpu_devices), "multi_worker_mirrored" (synchronous all-reduce
        across the workers of `cluster`), "parameter_server" (variables on the ps
        tasks, steps scheduled on workers by this process, the coordinator), or
        "tpu" (a TPU found by TPUClusterResolver).
      cluster: required for the multi-worker strategies.
      collective_timeout_s: multi_worker_mirrored: a collective that waits longer
        than this (a worker died) fails instead of hanging; None waits forever.

    Returns:
      The strategy. Its num_replicas_in_sync gives the number of replicas.

    Raises:
      ValueError: if the name is unknown, a multi-worker strategy has no cluster,
        a parameter-server cluster has no ps tasks, or no TPU is found.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    # Listing logical devices starts TensorFlow's runtime, after which collective
    # ops can no longer be configured: only the one-machine strategies do it.
    gpus = tf.config.list_logical_devices("GPU") if name in ("one_device", "mirrored") else []
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name in MULTI_WORKER and cluster is None:
        raise UserError(f"strategy={name} needs a cluster: set TF_CONFIG, or worker_hosts, task_type "
                         "and task_index (python -m launch.cluster does this for a local cluster)")
    if name == "multi_worker_mirrored":
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s)
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster.resolver(),
                                                         communication_options=options)
    if name == "parameter_server":
        if not cluster.spec.get("ps"):
            raise UserError("strategy=parameter_server needs ps tasks (ps_hosts or TF_CONFIG's 'ps' job)")
        return tf.distribute.experimental.ParameterServerStrategy(cluster.resolver())
    if name == "tpu":
        tpu = next((os.environ[k] for k in ("TPU_NAME", "COLAB_TPU_ADDR") if os.environ.get(k)), None)
        if tpu is None and not os.path.exists("/dev/accel0") and not os.path.exists("/dev/vfio"):
            # Without these, the resolver would go looking for a cloud metadata server.
            raise UserError("strategy=tpu: no TPU found here (no TPU_NAME, no /dev/accel0)")
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"strategy=tpu: no TPU found here ({first})") from None
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"strategy={name!r} is not known here; choose one of {', '.join(STRATEGIES)}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes summaries, progress and the real checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This process's worker index (0 outside multi-worker runs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_type else 0
