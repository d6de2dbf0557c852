"""The `stopline` command; subcommands live in their own modules (replay, study, the operator's handlers)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stopline import GROUP, PLURAL, VERSION, __version__, replay
from stopline.replay import live
from stopline.vocabulary import STUDY_LABEL

LIST_TIMEOUT_S = 30.0  # `stopline study`: connecting and listing the study's TrainingJobs, all of it


def _replay(args: argparse.Namespace) -> int:
    progress = _progress if sys.stderr.isatty() else None
    result = replay.replay(
        args.job, args.curves, task=args.task, progress=progress, history_file=args.history
    )
    if args.html is not None:
        title = f"stopline replay: {args.job.name} on {args.curves.name}" + (
            f", task {args.task}" if args.task is not None else ""
        )
        replay.write_html(args.html, replay.render_html(result, title))
    print(json.dumps(result.as_json(), indent=2) if args.json else replay.render_table(result))
    return 0


def _study(args: argparse.Namespace) -> int:
    """A live study's TrainingJobs, read from the apiserver now: replay's table, --json and --html page."""
    selector = args.selector or f"{STUDY_LABEL}={args.study}"
    items = asyncio.run(_training_jobs(args.namespace, selector))
    if not items:
        raise replay.ReplayError(
            f"no TrainingJobs match {selector} in namespace {args.namespace}; check the name, -n and "
            "that the CRD is installed (kubectl get tj -n NAMESPACE --show-labels)"
        )
    study = live.read_study(items, args.study or selector, args.namespace)
    if args.html is not None:
        page = study.page(f"stopline study: {study.name} in {args.namespace}")
        replay.write_html(args.html, replay.render_page(page))
    print(json.dumps(study.as_json(), indent=2) if args.json else study.table())
    return 0


async def _training_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    """The TrainingJobs of the namespace that match the selector, listed once with the kubeconfig (or the
    pod's service account) as the operator connects; any failure, or LIST_TIMEOUT_S passed, is one line."""
    import aiohttp  # the client libraries only for this command: `stopline replay` starts without them
    from kubernetes_asyncio.config import ConfigException

    from stopline.kube import ApiError, Kube

    try:
        async with asyncio.timeout(LIST_TIMEOUT_S):
            client = await Kube.connect()
            try:
                return await client.list_objects(f"{GROUP}/{VERSION}", PLURAL, namespace, selector)
            finally:
                await client.close()
    except (ApiError, aiohttp.ClientError, ConfigException, OSError, TimeoutError) as error:
        why = str(error) or f"no answer within {LIST_TIMEOUT_S:.0f} s"
        raise replay.ReplayError(f"cannot list the TrainingJobs {selector} in {namespace}: {why}") from None


def _progress(done: int, total: int) -> None:
    """A long replay (thousands of jobs) counts its jobs on the terminal, one line rewritten in place."""
    if done % 25 == 0 or done == total:
        end = "\n" if done == total else ""
        print(f"\rstopline replay: {done}/{total} jobs replayed", end=end, file=sys.stderr, flush=True)


def _operator(args: argparse.Namespace) -> int:
    """Run the operator in this process until SIGINT/SIGTERM; kopf is imported only for this command."""
    import kopf

    importlib.import_module("stopline.handlers")  # registers the handlers with kopf's default registry
    kopf.configure(verbose=args.verbose)
    options: dict[str, Any] = {
        "clusterwide": not args.namespace,
        "namespaces": args.namespace,
        "standalone": True,
        "memo": kopf.Memo(listen=args.listen),
    }
    if args.leader_elect:
        return _operator_when_elected(args, options)
    kopf.run(**options)
    return 0


def _operator_when_elected(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """--leader-elect: kopf starts only once this process holds the Lease (nothing is watched or written
    before), and the process exits 1 at once if it loses the Lease."""
    import kopf

    from stopline import leader

    given = {
        "lease_duration_s": args.leader_election_lease_duration,
        "renew_deadline_s": args.leader_election_renew_deadline,
        "retry_period_s": args.leader_election_retry_period,
    }
    timings = dataclasses.replace(leader.Timings(), **{k: v for k, v in given.items() if v is not None})
    lease_namespace = args.leader_election_namespace or os.environ.get("POD_NAMESPACE", "")
    problem = timings.problem() or (
        None if lease_namespace else "--leader-elect needs --leader-election-namespace or $POD_NAMESPACE"
    )
    if problem:
        print(f"stopline operator: error: {problem}", file=sys.stderr)
        return 2

    async def operate(stop: asyncio.Event, ready: asyncio.Event) -> None:
        await kopf.operator(stop_flag=stop, ready_flag=ready, **options)

    elected = leader.run_elected(timings, lease_namespace, args.leader_election_id, operate, args.listen)
    return asyncio.run(elected)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="stopline", description="Stop GPU training jobs early, keep the weights."
    )
    root.add_argument("--version", action="version", version=f"stopline {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    replay_command = commands.add_parser(
        "replay",
        help="run a TrainingJob's stop criteria over recorded learning curves",
        description="Replay a TrainingJob's criteria over recorded curves: a sequential sweep in file order.",
    )
    replay_command.add_argument(
        "--job", type=Path, required=True, metavar="JOB.yaml", help="a TrainingJob manifest"
    )
    replay_command.add_argument(
        "--curves",
        type=Path,
        required=True,
        metavar="CURVES.csv",
        help="CSV (or .csv.gz) with the header job,epoch,<metric>,... and an optional seconds column; "
        "or task,config,epoch,<metric>,...[,epoch_seconds], each task a sweep of its own",
    )
    replay_command.add_argument(
        "--task", metavar="TASK", help="replay only this task's sweep (a file with a task column)"
    )
    replay_command.add_argument(
        "--history",
        type=Path,
        metavar="EARLIER.csv",
        help="curves of earlier sweeps (as --curves; each job one that ran to its end) for the forecast "
        "criteria's history: they predict as finished jobs of the sweep do, never the value to beat",
    )
    replay_command.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    replay_command.add_argument(
        "--html",
        type=Path,
        metavar="FILE.html",
        help="also write one self-contained page (inline SVG and CSS, nothing fetched): every job's curve, "
        "where and by which criterion it was stopped, the best job, the epochs saved and the regret",
    )
    replay_command.set_defaults(run=_replay)
    study_command = commands.add_parser(
        "study",
        help="a live study's TrainingJobs from the apiserver: how each ended, stopped, or runs",
        description="Read a study's TrainingJobs from the apiserver now (kubeconfig, or the pod's service "
        "account) and show what each did from its status: its curve, phase, stop epoch and criterion, the "
        "epoch of its weights; as replay's table, --json or --html page.",
    )
    chosen = study_command.add_mutually_exclusive_group(required=True)
    chosen.add_argument(
        "study", nargs="?", metavar="STUDY", help=f"the TrainingJobs labelled {STUDY_LABEL}=STUDY"
    )
    chosen.add_argument(
        "-l", "--selector", metavar="SELECTOR", help="instead, the TrainingJobs this label selector matches"
    )
    study_command.add_argument(
        "-n", "--namespace", default="default", metavar="NS", help="their namespace (default: %(default)s)"
    )
    study_command.add_argument("--json", action="store_true", help="print replay's JSON object instead")
    study_command.add_argument(
        "--html",
        type=Path,
        metavar="FILE.html",
        help="also write replay's self-contained page: every job's curve, where and by which criterion it "
        "was stopped, the running ones, the best job and the epochs saved",
    )
    study_command.set_defaults(run=_study)
    operator_command = commands.add_parser(
        "operator",
        help="run the operator: watch TrainingJobs, run their trainers, record their phase",
        description="Run the stopline operator in this process (kopf); all namespaces unless --namespace.",
    )
    operator_command.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable, exact names); default: all namespaces",
    )
    operator_command.add_argument(
        "--listen",
        default="0.0.0.0:8080",
        metavar="HOST:PORT",
        help="serve /healthz and the operator's /metrics here (default: %(default)s)",
    )
    operator_command.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    election = operator_command.add_argument_group(
        "leader election",
        "Several replicas: only the holder of a coordination.k8s.io Lease acts, the others wait for it.",
    )
    election.add_argument(
        "--leader-elect",
        action="store_true",
        help="act only while holding the Lease; exit 1 on losing it, release it on SIGTERM",
    )
    election.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        help="the Lease's namespace (default: $POD_NAMESPACE)",
    )
    election.add_argument(
        "--leader-election-id",
        default="stopline-operator",
        metavar="NAME",
        help="the Lease's name (default: %(default)s)",
    )
    election.add_argument(
        "--leader-election-lease-duration",
        type=int,
        metavar="SECONDS",
        help="a Lease not renewed for this long may be taken over (whole seconds; default: 15)",
    )
    election.add_argument(
        "--leader-election-renew-deadline",
        type=float,
        metavar="SECONDS",
        help="the leader gives up when it could not renew for this long (default: 10)",
    )
    election.add_argument(
        "--leader-election-retry-period",
        type=float,
        metavar="SECONDS",
        help="how often to renew, or to try to acquire (default: 2)",
    )
    operator_command.set_defaults(run=_operator)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except replay.ReplayError as error:
        print(f"stopline {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `stopline replay ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
