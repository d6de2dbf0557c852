"""The `stopline` command; subcommands live in their own modules (today: replay)."""

from __future__ import annotations

import argparse
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
    return code


if __name__ == "__main__":
    sys.exit(main())
