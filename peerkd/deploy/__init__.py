"""Deploying peerkd on real Flower nodes: one ``flower-superlink`` and one ``flower-supernode`` per device.

Sub-commands of ``peerkd-deploy``:

- ``certs DIR``: a self-signed CA and a SuperLink certificate (test certificates).
- ``keys DIR --nodes N``: ECDSA (P-384) key pairs for SuperNode authentication.
- ``superlink``: start a SuperLink (TLS + node authentication unless ``--insecure``).
- ``supernode``: start one SuperNode with its ``--node-config``.
- ``local``: a whole cluster on loopback (certificates, keys, SuperLink, registration,
  N SuperNodes, a Flower connection) for a try-out; ``run`` then submits a run to it.
- ``run``: ``flwr run`` against a started cluster; ``--wait`` waits for ``summary.json``.
- ``stop``: end exactly the processes this state directory started (and their children).
- ``bench``: per-round wall time on loopback for a few cluster sizes.

Every started process is recorded in ``DIR/processes.json`` with its command line and
start time, so ``stop`` never signals a process that merely reused a PID. A state directory
is owned: while a process it recorded runs, a second ``local`` / ``superlink`` on it is
refused. Existing private keys are never overwritten without ``--force``. Every failure is
one line on stderr with a non-zero exit.

Modules, lowest first: ``commands`` (command lines and config text, pure), ``certs``
(certificates and keys), ``processes`` (finding and stopping processes via ``/proc``),
``cluster`` (the process record of a state directory), ``launch`` (a loopback cluster,
submitting runs), ``bench``, ``cli`` (the argparse sub-commands).
"""

from peerkd.deploy.bench import bench
from peerkd.deploy.certs import check_hosts, make_certs, make_node_keys, parse_host, write_secret
from peerkd.deploy.cli import main
from peerkd.deploy.cluster import PROCESS_FILE, Cluster, DeployError
from peerkd.deploy.commands import *  # noqa: F403  (its __all__: command lines and config text)
from peerkd.deploy.launch import *  # noqa: F403  (its __all__: the loopback cluster and runs)
from peerkd.deploy.processes import Started, process_tree, stop_escalating, stop_processes

__all__ = [
    "BASELINE_ENV",
    "BIN",
    "CLUSTER_FILE",
    "CONNECTION",
    "DEPLOY_ENV",
    "PROCESS_FILE",
    "Cluster",
    "DeployError",
    "LocalCluster",
    "Started",
    "bench",
    "check_hosts",
    "connection_toml",
    "control_client_address",
    "flwr_env",
    "free_ports",
    "is_loopback",
    "main",
    "make_certs",
    "make_node_keys",
    "node_config",
    "parse_host",
    "process_tree",
    "register_nodes",
    "start_local",
    "stop_escalating",
    "stop_processes",
    "submit_run",
    "superlink_args",
    "supernode_args",
    "wait_for_port",
    "wait_for_summary",
    "write_node_config",
    "write_secret",
]
