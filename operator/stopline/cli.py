"""The `stopline` command; subcommands live in their own modules (replay, and the operator's handlers)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from stopline import replay


def _replay(args: argparse.Namespace) -> int:
    result = replay.replay(args.job, args.curves)
    print(json.dumps(result.as_json(), indent=2) if args.json else replay.render_table(result))
    return 0


def _operator(args: argparse.Namespace) -> int:
    """Run the operator in this process until SIGINT/SIGTERM; kopf is imported only for this command."""
    import kopf

    importlib.import_module("stopline.handlers")  # registers the handlers with kopf's default registry
    kopf.configure(verbose=args.verbose)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        memo=kopf.Memo(listen=args.listen),
    )
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="stopline", description="Stop GPU training jobs early, keep the weights."
    )
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
        help="CSV (or .csv.gz) with the header job,epoch,<metric>,... and an optional seconds column",
    )
    replay_command.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    replay_command.set_defaults(run=_replay)
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
