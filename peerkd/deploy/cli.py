"""``peerkd-deploy``: one argparse sub-command per job, each bound to its function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

from peerkd.deploy.bench import WHERE, bench
from peerkd.deploy.certs import check_hosts, make_certs, make_node_keys
from peerkd.deploy.cluster import Cluster, DeployError
from peerkd.deploy.commands import (
    CLIENTAPPS,
    CONNECTION,
    DEPLOY_ENV,
    connection_toml,
    control_client_address,
    is_loopback,
    node_config,
    superlink_args,
    supernode_args,
    write_node_config,
)
from peerkd.deploy.launch import (
    DEFAULT_SETUP,
    NODE_CONFIG,
    SETUPS,
    LocalCluster,
    node_home,
    output_reason,
    start_local,
    start_node,
    submit_run,
    wait_for_port,
    wait_for_summary,
)
from peerkd.deploy.netns import netns_unavailable
from peerkd.errors import ConfigError, check_choice, check_range

log = logging.getLogger("peerkd.deploy")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``peerkd-deploy``.

    Parameters
    ----------
    argv
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0; 2 for a bad setting; 1 for a step that failed (a state in use or
        damaged, a process that did not start, a file the system refused) or when ``stop`` left
        processes running. Each failure is one line on stderr.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.update({k: v for k, v in DEPLOY_ENV.items() if k not in os.environ})
    a = _parser().parse_args(argv)
    try:
        return a.func(a)
    except ConfigError as exc:  # a setting the user can fix
        return _fail(a.cmd, str(exc), 2)
    except DeployError as exc:  # a step that cannot go on, its reason already one line
        return _fail(a.cmd, str(exc), 1)
    except OSError as exc:  # a file or program the system refused (read-only, missing, no space)
        return _fail(a.cmd, f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc), 1)


def _fail(cmd: str, message: str, code: int) -> int:
    """Print ``message`` as one line on stderr and return ``code``."""
    print(f"peerkd-deploy {cmd}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    """The parser of every sub-command, in the order ``--help`` lists them."""
    p = argparse.ArgumentParser(prog="peerkd-deploy", description="Run peerkd on a Flower SuperLink and SuperNodes.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (
        _add_certs,
        _add_keys,
        _add_superlink,
        _add_supernode,
        _add_clientapp,
        _add_local,
        _add_run,
        _add_stop,
        _add_bench,
    ):
        add(sub)
    return p


# --- certs, keys ----------------------------------------------------------------------


def _add_certs(sub: argparse._SubParsersAction) -> None:
    """``certs DIR``."""
    c = sub.add_parser("certs", help="self-signed CA + SuperLink certificate (for tests and try-outs)")
    c.add_argument("dir", type=Path)
    c.add_argument(
        "--hosts", default="127.0.0.1,localhost", help="comma list of the SuperLink's IPs ([::1] too) and DNS names"
    )
    c.add_argument("--force", action="store_true", help="replace an existing ca.key / server.key")
    c.set_defaults(func=_cmd_certs)


def _cmd_certs(a: argparse.Namespace) -> int:
    """Write the CA and the SuperLink certificate."""
    log.info("wrote %s", make_certs(a.dir, check_hosts(a.hosts), force=a.force))
    return 0


def _add_keys(sub: argparse._SubParsersAction) -> None:
    """``keys DIR --nodes N``."""
    k = sub.add_parser("keys", help="ECDSA key pairs for SuperNode authentication")
    k.add_argument("dir", type=Path)
    k.add_argument("--nodes", type=int, default=1)
    k.add_argument("--prefix", default="node")
    k.add_argument("--force", action="store_true", help="replace existing private keys")
    k.set_defaults(func=_cmd_keys)


def _cmd_keys(a: argparse.Namespace) -> int:
    """Write the node key pairs."""
    for private, public in make_node_keys(a.dir, a.nodes, a.prefix, force=a.force):
        log.info("%s  %s", private, public)
    return 0


# --- superlink, supernode: one process each, for real devices ---------------------------


def _add_superlink(sub: argparse._SubParsersAction) -> None:
    """``superlink --state DIR``."""
    s = sub.add_parser("superlink", help="start a SuperLink in the background")
    s.add_argument("--state", type=Path, required=True, help="directory for logs and the process record")
    s.add_argument("--fleet", default="0.0.0.0:9092", help="Fleet API address (SuperNodes connect here)")
    s.add_argument(
        "--control",
        default="127.0.0.1:9093",
        help="Control + Runtime HTTP API address (`flwr run` connects here); loopback unless --expose-control",
    )
    s.add_argument(
        "--expose-control",
        action="store_true",
        help="allow a non-loopback --control: whoever reaches it can run code on every node (TLS required)",
    )
    s.add_argument("--certs", type=Path, help="directory with ca.crt, server.pem, server.key")
    s.add_argument("--insecure", action="store_true", help="no TLS and no node authentication")
    s.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for the SuperLink to listen")
    s.set_defaults(func=_cmd_superlink)


CERT_FILES = ("ca.crt", "server.pem", "server.key")


def _check_superlink_args(a: argparse.Namespace) -> Path | None:
    """The resolved certificate directory, once the flags are consistent; else ConfigError."""
    if a.certs is None and not a.insecure:
        raise ConfigError("--certs", "a certificate directory is required", "--certs DIR, or --insecure on loopback")
    if not is_loopback(a.control) and not a.expose_control:
        raise ConfigError(
            "--control",
            f"{a.control} is reachable from other machines, and whoever reaches the Control API can run code on "
            "every node",
            "a loopback address (reach it through an SSH tunnel), or --expose-control with TLS",
        )
    if a.expose_control and a.insecure:
        raise ConfigError("--expose-control", "refused with --insecure (anyone could submit runs unencrypted)", "TLS")
    if a.certs is None:
        return None
    certs = a.certs.resolve()
    if missing := [f for f in CERT_FILES if not (certs / f).is_file()]:
        raise ConfigError("--certs", f"{certs} lacks {', '.join(missing)}", f"a directory with {', '.join(CERT_FILES)}")
    return certs


def _cmd_superlink(a: argparse.Namespace) -> int:
    """Start a SuperLink, wait until it listens, and write the Flower connection and ``cluster.json`` for it."""
    certs = _check_superlink_args(a)
    cluster = Cluster(a.state)
    with cluster.claim():  # a running SuperLink keeps its state: no second one records itself over it
        flwr_home = cluster.state / "flwr-home"
        flwr_home.mkdir(exist_ok=True)
        control = control_client_address(a.control)
        (flwr_home / "config.toml").write_text(connection_toml(control, str(certs / "ca.crt") if certs else None))
        args = superlink_args(a.fleet, a.control, certs, not a.insecure, cluster.state / "superlink-flwr.log")
        link = cluster.start("superlink", args, env={"FLWR_HOME": str(flwr_home)})
        try:
            for address in (control_client_address(a.fleet), control):
                wait_for_port(address, a.start_timeout, link)
        except DeployError as exc:
            cluster.stop(["superlink"])
            log_file = cluster.state / "superlink.log"
            reason = output_reason(log_file.read_text(errors="replace")) if log_file.exists() else f"see {log_file}"
            raise DeployError(f"SuperLink did not start: {exc}: {reason}") from None
        LocalCluster(str(cluster.state), a.fleet, control, str(flwr_home), not a.insecure, 0).write()
    log.info(
        "SuperLink pid %d: Fleet API %s, Control API %s%s",
        link.pid,
        a.fleet,
        a.control,
        " (INSECURE)" if a.insecure else "",
    )
    log.info("register nodes: FLWR_HOME=%s flwr supernode register node-0.pub %s", flwr_home, CONNECTION)
    return 0


def _add_supernode(sub: argparse._SubParsersAction) -> None:
    """``supernode --state DIR --superlink HOST:PORT --partition-id I --num-partitions N``."""
    n = sub.add_parser("supernode", help="start one SuperNode in the background")
    n.add_argument("--state", type=Path, required=True)
    n.add_argument("--superlink", required=True, help="the SuperLink's Fleet API, host:9092")
    n.add_argument("--partition-id", type=int, required=True)
    n.add_argument("--num-partitions", type=int, required=True)
    n.add_argument("--data-path", default="", help="this device's own .npz/.csv (labels = class indices)")
    n.add_argument("--student", default="", help="student architecture of this node")
    n.add_argument("--root-cert", type=Path, help="the CA certificate (ca.crt)")
    n.add_argument("--key", type=Path, help="this node's private key (registered with `flwr supernode register`)")
    n.add_argument("--port", type=int, default=9094, help="local Runtime API port (distinct per node on one machine)")
    n.add_argument(
        "--clientapp",
        choices=CLIENTAPPS,
        default="warm",
        help="warm: one long-lived ClientApp process serves every message (default); "
        "fresh: Flower's default, a new process per message",
    )
    n.add_argument(
        "--idle-poll",
        type=float,
        default=SETUPS[DEFAULT_SETUP].idle_poll_s,
        help="longest wait (s) between the SuperNode's empty pulls, backing off from 0.05 s "
        "(a patch of flwr 1.39's fixed 3 s: peerkd.deploy.fastnode); 0: Flower's SuperNode unchanged",
    )
    n.add_argument("--insecure", action="store_true")
    n.set_defaults(func=_cmd_supernode)


def _cmd_supernode(a: argparse.Namespace) -> int:
    """Start one SuperNode with its node config."""
    config = node_config(a.partition_id, a.num_partitions, a.data_path, a.student)  # range-checked
    check_range("--port", a.port, 1, 65535)
    if a.root_cert is None and not a.insecure:
        raise ConfigError("--root-cert", "the CA certificate is required", "--root-cert ca.crt, or --insecure")
    for flag, path in (("--root-cert", None if a.insecure else a.root_cert), ("--key", a.key)):
        if path is not None and not path.is_file():
            raise ConfigError(flag, f"{path} is not a file")
    if a.insecure and not is_loopback(a.superlink):
        log.warning("insecure connection to %s: logits travel unencrypted", a.superlink)
    cluster = Cluster(a.state)
    name = f"node-{a.partition_id}"
    with cluster.claim([name, f"{name}-app"]):
        root_cert = None if a.insecure else a.root_cert.resolve()
        config_file = write_node_config(node_home(cluster.state, name) / NODE_CONFIG, config)
        key = a.key.resolve() if a.key else None
        args = supernode_args(a.superlink, config_file, a.port, root_cert, key, a.clientapp, a.idle_poll)
        node = start_node(cluster, name, args, a.port if a.clientapp == "warm" else None)
    log.info("SuperNode %s pid %d -> %s", name, node.pid, a.superlink)
    return 0


def _add_clientapp(sub: argparse._SubParsersAction) -> None:
    """``clientapp --runtime-api-address HOST:PORT``: the warm ClientApp of a SuperNode."""
    c = sub.add_parser(
        "clientapp",
        help="serve a `flower-supernode --isolation process` with one long-lived ClientApp process "
        "(`supernode` starts it for you)",
    )
    c.add_argument("--runtime-api-address", default="127.0.0.1:9094", help="the SuperNode's Runtime API (its --port)")
    c.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    c.set_defaults(func=_cmd_clientapp)


def _cmd_clientapp(a: argparse.Namespace) -> int:
    """Serve the SuperNode's messages until SIGTERM/SIGINT or until its SuperNode exits."""
    from peerkd.deploy.warm import serve  # imports flwr's runtime: only this command needs it

    serve(a.runtime_api_address, parent_pid=a.parent_pid)
    return 0


# --- local, run, stop, bench: a cluster on loopback -------------------------------------


def _add_local(sub: argparse._SubParsersAction) -> None:
    """``local --state DIR --nodes N``."""
    lo = sub.add_parser("local", help="a whole cluster on loopback, secure by default")
    lo.add_argument("--state", type=Path, required=True)
    lo.add_argument("--nodes", type=int, default=3)
    lo.add_argument("--students", default="", help="comma list, assigned round-robin to nodes")
    lo.add_argument("--insecure", action="store_true")
    lo.add_argument(
        "--setup",
        choices=SETUPS,
        default=DEFAULT_SETUP,
        help="how SuperNodes run: warm-fast (default: warm ClientApps, 1 s idle poll), warm, cached, "
        "flower (Flower's defaults)",
    )
    lo.set_defaults(func=_cmd_local)


def _cmd_local(a: argparse.Namespace) -> int:
    """Start a whole cluster on loopback."""
    students = [s for s in a.students.split(",") if s]
    info = start_local(a.state, a.nodes, secure=not a.insecure, students=students, setup=a.setup)
    log.info(
        "cluster up: Fleet API %s, Control API %s, %d nodes%s; FLWR_HOME=%s",
        info.fleet,
        info.control,
        info.nodes,
        "" if info.secure else " (INSECURE)",
        info.flwr_home,
    )
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    """``run --state DIR --run-config ...``."""
    r = sub.add_parser("run", help="submit a run (flwr run) to the cluster in --state")
    r.add_argument("--state", type=Path, required=True)
    r.add_argument("--app", type=Path, default=Path("."))
    r.add_argument("--run-config", required=True, help="as for `flwr run`; give out='/absolute/path'")
    r.add_argument("--wait", type=float, default=0.0, help="seconds to wait for summary.json (0: don't)")
    r.set_defaults(func=_cmd_run)


def _cmd_run(a: argparse.Namespace) -> int:
    """Submit a run; with ``--wait`` and an ``out=`` in the run config, wait for its summary."""
    run_id = submit_run(a.state.resolve(), a.run_config, a.app.resolve())
    log.info("run %d submitted", run_id)
    out = re.search(r"out=['\"]([^'\"]+)['\"]", a.run_config)
    if a.wait > 0 and out:
        summary = wait_for_summary(Path(out.group(1)), Cluster(a.state), a.wait)
        log.info("done: acc_mean %.4f over %d clients", summary["acc_mean"] or 0, len(summary["per_client"]))
    return 0


def _add_stop(sub: argparse._SubParsersAction) -> None:
    """``stop --state DIR [NAME ...]``."""
    st = sub.add_parser("stop", help="stop what --state started (default: everything)")
    st.add_argument("--state", type=Path, required=True)
    st.add_argument("names", nargs="*", help="e.g. node-2 (default: all)")
    st.set_defaults(func=_cmd_stop)


def _cmd_stop(a: argparse.Namespace) -> int:
    """Stop the recorded processes and say which; 1 if any survived."""
    if not a.state.is_dir():  # a typo: say so, and leave no empty directory behind
        raise ConfigError("--state", f"{a.state} is not a directory", "the --state that local/superlink/supernode used")
    cluster = Cluster(a.state)
    running = cluster.running(a.names or None)
    left = cluster.stop(a.names or None)
    stopped = [f"{s.name} (PID {s.pid})" for s in running if s.pid not in left]
    print(f"stopped {', '.join(stopped)}" if stopped else f"nothing recorded in {a.state} was running")
    if left:
        log.error("still running: %s", sorted(left))
        return 1
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    """``bench --state DIR --nodes 2,8 --setups flower,warm-fast``."""
    b = sub.add_parser("bench", help="where a deployed round's time goes, per place, setup and cluster size")
    b.add_argument("--state", type=Path, required=True)
    b.add_argument("--nodes", default="2,8")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--setups", default=",".join(SETUPS), help=f"comma list of {', '.join(SETUPS)}")
    b.add_argument("--app", type=Path, default=Path("."))
    b.add_argument("--secure", action="store_true", help="TLS + node auth on loopback (always on across namespaces)")
    b.add_argument(
        "--where",
        default="loopback",
        help=f"comma list of {', '.join(WHERE)} (netns: each node in its own network namespace; root only)",
    )
    b.set_defaults(func=_cmd_bench)


def _cmd_bench(a: argparse.Namespace) -> int:
    """One JSON line per (place, setup, cluster size), printed and appended to STATE/bench.jsonl as each is
    measured: per-round wall, start-up, handler, training and waiting."""
    if not re.fullmatch(r"[1-9]\d*(,[1-9]\d*)*", a.nodes):
        raise ConfigError("--nodes", f"{a.nodes!r} is not a comma list of cluster sizes", "e.g. 2,8 (each >= 1)")
    check_range("--rounds", a.rounds, 1)
    setups = [check_choice("--setups", x, SETUPS) for x in a.setups.split(",")]
    sizes = [int(x) for x in a.nodes.split(",")]
    places = tuple(check_choice("--where", x, WHERE) for x in a.where.split(","))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill tears the cluster down as Ctrl-C does
    if "netns" in places and (why := netns_unavailable()):
        raise ConfigError("--where", f"netns is not available here: {why}", "loopback")
    for row in bench(a.state.resolve(), sizes, a.rounds, a.app.resolve(), a.secure, setups, places):
        log.info(json.dumps(row))
    return 0
