"""``hush dev up|down|status|demo``: a local control plane with Hush, for development and e2e.

Only argument parsing and presentation live here; ``hush.dev.cluster`` (with
``hush.dev.install``) and ``hush.dev.demo`` do the work. Progress goes to stderr so that
stdout stays machine-readable: ``up`` prints exactly one line, the absolute path of the
admin kubeconfig (``KUBECONFIG=$(hush dev up)`` works), and ``status --json`` prints one
JSON document. ``demo`` is the exception: its story is its stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from hush.dev import cluster, errors, install, layout


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dev",
        help="Run a local Kubernetes control plane (etcd, apiserver, kwok) without Docker.",
        description=(
            "A real control plane on 127.0.0.1 built from source; state lives in "
            "${HUSH_STATE_DIR:-${XDG_CACHE_HOME:-~/.cache}/hush/clusters}/NAME. "
            "See docs/local-control-plane.md."
        ),
    )
    actions = parser.add_subparsers(dest="dev_command", required=True, metavar="ACTION")

    up_parser = actions.add_parser(
        "up",
        help="Start the cluster (or reuse it when healthy); print the kubeconfig path.",
    )
    _add_name(up_parser)
    up_parser.add_argument(
        "--nodes",
        type=int,
        default=None,
        help=(
            f"Number of kwok nodes (default {cluster.DEFAULT_NODE_COUNT} for a new cluster; "
            "a running cluster keeps its count unless this is given)."
        ),
    )
    up_parser.add_argument(
        "--no-hush",
        dest="install_hush",
        action="store_false",
        help=(
            "Only the control plane and the CRDs: do not run the operator nor register its "
            "webhooks and admission policies, and remove them if an earlier up installed "
            "them (for test suites that start their own operators)."
        ),
    )
    real_node = up_parser.add_mutually_exclusive_group()
    real_node.add_argument(
        "--real-node",
        dest="real_node",
        action="store_true",
        default=None,
        help=(
            "Add one real node (containerd, runc, CNI bridge, kubelet) beside the kwok nodes, "
            "behind a network guard; needs root on Linux. The kwok nodes get a taint. A "
            "running cluster keeps what it has unless this or --no-real-node is given."
        ),
    )
    real_node.add_argument(
        "--no-real-node",
        dest="real_node",
        action="store_false",
        help="Recreate a cluster that has a real node without one.",
    )
    up_parser.set_defaults(handler=run_up)

    down_parser = actions.add_parser(
        "down", help="Stop every process of the cluster and delete its files."
    )
    _add_name(down_parser)
    down_parser.set_defaults(handler=run_down)

    status_parser = actions.add_parser(
        "status", help="Show each component; exit 1 if any is not running."
    )
    _add_name(status_parser)
    status_parser.add_argument(
        "--json", action="store_true", help="Print the status as one JSON document."
    )
    status_parser.set_defaults(handler=run_status)

    demo_parser = actions.add_parser(
        "demo",
        help="Bring the cluster up with Hush and tell its story with real objects.",
        description=(
            "Runs `hush dev up`, then, in namespace hush-demo (re-created): a budget with two "
            "team quotas, policies, enforcement, a refused and an injected Deployment, "
            "queries through the pods' sidecars until the budget is exhausted, the ledger, "
            "and a policy change that rolls the workload. The cluster stays up."
        ),
    )
    _add_name(demo_parser)
    demo_parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="Bold section headers (auto: when stdout is a terminal).",
    )
    demo_parser.set_defaults(handler=run_demo)


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name",
        default=layout.DEFAULT_CLUSTER_NAME,
        type=_cluster_name,
        help=f"Cluster name (default {layout.DEFAULT_CLUSTER_NAME}).",
    )


def _cluster_name(value: str) -> str:
    try:
        return layout.validate_cluster_name(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hush dev: %(message)s"))
    package_logger = logging.getLogger("hush.dev")
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False


def _fail(error: errors.DevClusterError) -> int:
    print(f"hush dev: error: {error}", file=sys.stderr)
    return 1


def run_up(arguments: argparse.Namespace) -> int:
    _configure_logging()
    try:
        kubeconfig = cluster.up(
            name=arguments.name,
            nodes=arguments.nodes,
            environ=os.environ,
            install_hush=arguments.install_hush,
            real_node_wanted=arguments.real_node,
        )
    except errors.DevClusterError as error:
        return _fail(error)
    print(kubeconfig)
    return 0


def run_down(arguments: argparse.Namespace) -> int:
    _configure_logging()
    try:
        cluster.down(name=arguments.name, environ=os.environ)
    except errors.DevClusterError as error:
        return _fail(error)
    return 0


def _status_document(state: cluster.ClusterStatus) -> dict[str, Any]:
    return {
        "name": state.name,
        "stateDir": str(state.state_dir),
        "exists": state.exists,
        "healthy": state.healthy,
        "kubeconfig": str(state.kubeconfig) if state.kubeconfig else None,
        "nodes": state.nodes,
        "components": [
            {
                key: str(value) if key == "log_file" else value
                for key, value in dataclasses.asdict(component).items()
            }
            for component in state.components
        ],
        "operator": _operator_document(state.operator),
    }


def _operator_document(operator: install.OperatorStatus | None) -> dict[str, Any] | None:
    if operator is None:
        return None
    return {
        "state": operator.state,
        "pid": operator.pid,
        "accountantUrl": operator.ports.accountant_url if operator.ports else None,
        "webhookUrl": operator.ports.webhook_url if operator.ports else None,
        "detail": operator.detail,
        "logFile": str(operator.log_file),
        "logTail": operator.log_tail,
    }


def _print_status(state: cluster.ClusterStatus) -> None:
    if not state.exists:
        print(f"Cluster {state.name}: not created ({state.state_dir} has no cluster.json)")
    else:
        print(f"Cluster {state.name}: {'healthy' if state.healthy else 'NOT healthy'}")
        print(f"  state dir:  {state.state_dir}")
        print(f"  kubeconfig: {state.kubeconfig or '(missing)'}")
    for component in state.components:
        pid = str(component.pid) if component.pid else "-"
        port = str(component.port) if component.port else "-"
        print(f"  {component.name:<24} {component.state:<12} pid {pid:<8} port {port}")
        if component.state in ("crashed", "unhealthy"):
            print(f"    {component.detail}")
            for line in component.log_tail.splitlines():
                print(f"    | {line}")
    operator = state.operator
    if state.exists and operator is None:
        print(f"  {install.OPERATOR_PROCESS:<24} {'not installed':<12} (hush dev up --no-hush)")
    elif operator is not None:
        pid = str(operator.pid) if operator.pid else "-"
        print(
            f"  {install.OPERATOR_PROCESS:<24} {operator.state:<12} pid {pid:<8} {operator.detail}"
        )
        print(f"    log: {operator.log_file}")
        for line in operator.log_tail.splitlines():
            print(f"    | {line}")


def run_status(arguments: argparse.Namespace) -> int:
    state = cluster.status(name=arguments.name, environ=os.environ)
    if arguments.json:
        print(json.dumps(_status_document(state), indent=2))
    else:
        _print_status(state)
    return 0 if state.healthy else 1


def run_demo(arguments: argparse.Namespace) -> int:
    from hush.dev import demo  # imported here: only the demo needs the sample app and HTTP

    _configure_logging()
    color = arguments.color == "always" or (arguments.color == "auto" and sys.stdout.isatty())
    try:
        demo.run(name=arguments.name, environ=os.environ, color=color)
    except errors.DevClusterError as error:
        return _fail(error)
    return 0
