"""What one forecast or rungs refit costs the operator: one engine call with a new epoch, 1,000 peers.

The operator refits a job's criteria only when a new epoch arrives. At 1,000 jobs that each report an epoch
every `--epoch-seconds`, the cores the refits take are calls per second x seconds per call. Then one
judgement of the resume rule (stopline.criteria.resume.plan) on a study of that many members, a fifth
finished and the rest stopped at a random epoch: the operator makes one each time a member ends.
Run: .venv/bin/python bench/policy/cost.py [--peers 1000] [--epochs 100] [--epoch-seconds 60]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Mapping

from stopline import api
from stopline.criteria import CohortCurve, Observation, evaluate
from stopline.criteria import resume as rule

# The forecast's reference is a target every peer beats, so it never stops the job: a typical job (like
# many peers, so the neighbours are many) then costs what it costs every epoch. Rungs and cohort scan every
# peer at any level.
CRITERIA: dict[str, dict[str, object]] = {
    "forecast (defaults, a target it always beats)": {
        "name": "f",
        "forecast": {"reference": "target", "target": 100.0},
    },
    "rungs (defaults)": {"name": "r", "rungs": {}},
    "cohort (defaults)": {"name": "c", "cohort": {}},
}


def peers(count: int, epochs: int) -> tuple[CohortCurve, ...]:
    """Finished jobs with noisy power-law curves, as a study's peers look to the engine."""
    draw = random.Random(1)
    curves = []
    for index in range(count):
        scale, floor = draw.uniform(0.5, 2), draw.uniform(0.1, 1)
        values = {e: floor + scale * e**-0.5 + draw.gauss(0, 0.01) for e in range(1, epochs + 1)}
        curves.append(CohortCurve(f"p{index}", "val_loss", values, completed=True))
    return tuple(curves)


def typical(name: str, epoch: int) -> float:
    """The job: like a typical peer for the forecast; ahead of every peer (never stopped) otherwise."""
    return 0.55 + 1.25 * epoch**-0.5 if name.startswith("forecast") else 0.01 / epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--epoch-seconds", type=float, default=60.0)
    args = parser.parse_args()
    cohort = peers(args.peers, args.epochs)
    print(f"{args.peers} finished peers of {args.epochs} epochs; one call per new epoch of one job")
    for name, criterion in CRITERIA.items():
        spec = api.parse_spec(
            {
                "template": {"spec": {"containers": [{"name": "trainer"}]}},
                "objective": {"metric": "val_loss"},
                "checkpoint": {"pvc": {"claimName": "cost"}},
                "criteria": [criterion],
            }
        )
        states: Mapping[str, Mapping[str, object]] = {}
        spent = []
        for epoch in range(1, args.epochs):
            observation = Observation(
                now=float(epoch), samples={epoch: {"val_loss": typical(name, epoch)}}, cohort=cohort
            )
            clock = time.perf_counter()
            evaluation = evaluate(spec, states, observation)
            spent.append(time.perf_counter() - clock)
            states = evaluation.states
        per_call = statistics.median(spent)
        cores = 1000 / args.epoch_seconds * per_call
        print(
            f"  {name}: median {per_call * 1e3:.2f} ms per call (max {max(spent) * 1e3:.1f} ms); 1,000 jobs "
            f"with an epoch every {args.epoch_seconds:.0f} s: {cores:.3f} core"
        )
    draw = random.Random(2)
    members = [
        rule.SweepJob(peer.job, "finished", peer.values)
        if draw.random() < 0.2
        else rule.SweepJob(
            peer.job,
            "stopped",
            {e: v for e, v in peer.values.items() if e <= draw.randint(1, args.epochs - 1)},
        )
        for peer in cohort
    ]
    spent = []
    for _ in range(3):
        clock = time.perf_counter()
        judged = rule.plan(members, rule.ResumeSettings("min"), 0.0).judged
        spent.append(time.perf_counter() - clock)
    print(
        f"  resume rule: median {statistics.median(spent) * 1e3:.0f} ms per judgement of a study of "
        f"{len(members)} ({len(judged)} stopped jobs judged)"
    )


if __name__ == "__main__":
    main()
