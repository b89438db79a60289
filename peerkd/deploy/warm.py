"""A warm ClientApp: one long-lived process serves every message of its SuperNode.

In flwr 1.39 a SuperNode's default (``--isolation subprocess``) starts ``flower-superexec``,
which starts a fresh ``flwr-clientapp`` process for every message; that process pulls one
task from the SuperNode's Runtime API, runs it and exits (``run_clientapp`` ends in
``flwr_exit``: the long-running ClientApp process of 2024 is gone by 1.39), so each message
pays ``import torch`` + flwr, the world's load and the training path's first build. Flower's
warm executors in 1.39 are Kubernetes pools for agent, model and connector tasks only.

With ``--isolation process`` the SuperNode starts nothing and serves the same Runtime API to
an executor started beside it. ``WarmRunner`` is that executor, in one process that stays: it
asks for a task (``AcquireTask``, as ``flower-superexec`` does), then runs it in-process with
Flower's own task functions (``pull_task_input``, ``push_message``, ``push_task_output``, the
task heartbeat): the steps of ``run_clientapp`` minus the exit. The FAB is installed and its
ClientApp loaded on its first task, so imports, the world (``build_world``'s cache), torch's
thread pool and the optimiser's first build persist between messages. The student still
lives in ``context.state``, which the SuperNode keeps and hands to every task, so a restarted
runner continues the same student.

Code: the runner runs the installed ``peerkd`` and the first FAB's own modules; a task of
another FAB (a changed app) runs in a fresh ``flwr-clientapp`` process, Flower's own path, so
it always runs its own code (restart the runner to make that FAB warm).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import AcquireTaskRequest, PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from peerkd.env import TASK_T0_ENV
from peerkd.wire.fastpull import retry_settings

__all__ = ["TaskLog", "WarmRunner", "serve"]

log = logging.getLogger("peerkd.deploy.warm")


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """flwr 1.39's ``run_clientapp.pull_task_input`` with a short retry for the message's objects.

    The SuperNode offers a task as soon as it has stored the message, then pulls the message's
    objects from the SuperLink. Flower's ClientApp process starts seconds later; a warm runner
    asks within ``poll_s`` and can find an object still missing, which Flower asks for again
    after 1 s, then 2 s: here after 20 ms, doubling up to 0.5 s (``peerkd.wire.fastpull``'s
    ``retry_settings``). The rest is Flower's code.
    """
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id = res.task_id, res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        **retry_settings(),
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # a deflated message lacks its own id
    return message, context, run, fab


@dataclass
class TaskLog:
    """What one task cost inside the runner (seconds), for ``peerkd-deploy bench``."""

    pulled: float = 0.0  # acquiring the token and pulling the message, context and FAB
    loaded: float = 0.0  # installing the FAB and loading the ClientApp (first message of a FAB only)
    ran: float = 0.0  # the ClientApp's handler
    pushed: float = 0.0  # pushing the reply and the context back
    ok: bool = False


@dataclass
class WarmRunner:
    """The executor of one SuperNode's Runtime API at ``address``."""

    address: str
    insecure: bool = True
    certificates: bytes | None = None
    poll_s: float = 0.05
    apps: dict[str, ClientApp] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def _client(self, component: str, token: str | None = None) -> RuntimeHttpClient:
        interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.insecure,
            root_certificates=self.certificates,
            interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def serve(self, on_task: Callable[[TaskLog], None] | None = None) -> None:
        """Acquire and run tasks until ``stop`` is set."""
        executor = self._client("SuperExec")
        try:
            while not self.stop.is_set():
                try:
                    res = executor.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
                except Exception as ex:  # noqa: BLE001  (the SuperNode restarting or gone: the watcher decides)
                    log.warning("no answer from the SuperNode's Runtime API at %s: %s", self.address, ex)
                    self.stop.wait(1.0)
                    continue
                if res.HasField("task") and res.token:
                    os.environ[TASK_T0_ENV] = repr(time.time())  # the ClientApp's start-up counts from here
                    if self.apps and res.task.fab_hash not in self.apps:
                        self.run_fresh(res.token)
                        continue
                    done = self.run_task(res.token)
                    if on_task is not None:
                        on_task(done)
                    continue  # another message may be waiting: ask again at once
                self.stop.wait(self.poll_s)
        finally:
            executor.close()

    def run_task(self, token: str) -> TaskLog:
        """One task, as ``flwr-clientapp`` runs it, without exiting; every failure becomes an error reply."""
        client, out = self._client("flwr-clientapp", token), TaskLog()
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message: Message | None = None
        context: Context | None = None
        reply: Message | None = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            t = time.perf_counter()
            message, context, run, fab = pull_task_input(client)
            out.pulled, t = time.perf_counter() - t, time.perf_counter()
            app = self._app(run.fab_id, run.fab_version, fab.hash_str, fab.content)
            out.loaded, t = time.perf_counter() - t, time.perf_counter()
            reply = app(message=message, context=context)
            out.ran = time.perf_counter() - t
            status, details, out.ok = SubStatus.COMPLETED, "", True
        except Exception as ex:  # noqa: BLE001  (Flower's own runner does the same: the error is the reply)
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError) else None
            reason = f"{type(ex)}:<'{ex}'>"
            log.error("ClientApp raised an exception: %s", reason, exc_info=ex)
            details = reason
            if message is not None:
                reply = Message(
                    Error(code=code or ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
                )
        finally:
            t = time.perf_counter()
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as ex:  # noqa: BLE001  (the SuperNode will time the task out; keep serving)
                log.error("failed to push the reply: %s", ex)
            push_task_output(client=client, context=context, sub_status=status, details=details)
            out.pushed = time.perf_counter() - t
            heartbeat.stop()
            client.close()
        return out

    def run_fresh(self, token: str) -> int:
        """One task in a fresh ``flwr-clientapp`` process (a FAB other than the warm one); its exit code."""
        log.warning("a task of another FAB: served by a fresh flwr-clientapp process (restart to make it warm)")
        args = [str(Path(sys.executable).with_name("flwr-clientapp")), "--runtime-api-address", self.address]
        args += ["--token", token, "--parent-pid", str(os.getpid())]
        args += ["--insecure"] if self.insecure else []
        env = {k: v for k, v in os.environ.items() if k != TASK_T0_ENV}
        return subprocess.run(args, env=env, check=False).returncode

    def _app(self, fab_id: str, fab_version: str, fab_hash: str, content: bytes) -> ClientApp:
        """The FAB's ClientApp, installed and loaded on its first message only."""
        if fab_hash not in self.apps:
            install_from_fab(content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.apps[fab_hash] = load(fab_id, fab_version, fab_hash)
        return self.apps[fab_hash]


def serve(
    address: str, insecure: bool = True, certificates: bytes | None = None, parent_pid: int | None = None
) -> None:
    """Serve the SuperNode at ``address`` until SIGTERM/SIGINT, or until ``parent_pid`` exits."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else a line per poll of the Runtime API
    runner = WarmRunner(address, insecure, certificates)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: _shut_down(runner.stop))
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid, runner.stop), daemon=True).start()
    runner.serve(_log_task)


def _log_task(t: TaskLog) -> None:
    state = "ok" if t.ok else "FAILED"
    log.info("task %s: pull %.2f s, load %.2f s, run %.2f s, push %.2f s", state, t.pulled, t.loaded, t.ran, t.pushed)


def _shut_down(stop: threading.Event, grace_s: float = 2.0) -> None:
    """Stop after the current step; exit anyway after ``grace_s`` (a call to a SuperNode that is
    gone may be retrying)."""
    stop.set()
    timer = threading.Timer(grace_s, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def _watch_parent(pid: int, stop: threading.Event) -> None:
    """Shut down once process ``pid`` (the SuperNode) is gone (a zombie counts as gone)."""
    while not stop.wait(0.5):
        if not _alive(pid):
            log.info("SuperNode (pid %d) is gone: stopping", pid)
            _shut_down(stop)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except ProcessLookupError:
        return False
    except OSError:  # no /proc (not Linux), or not ours to read: the signal check stands
        return True
    return stat[stat.rindex(")") + 2] != "Z"
