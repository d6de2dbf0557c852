"""What agreeing on a stop costs a training step: Run.should_stop() at every step (check_every=1, one
all-reduce of the flag per step) against a boundary every N steps (check_every=N) and against no check.

--ranks processes (default 2) join one gloo process group on this machine (CPU, loopback), as the
trainer tier's ranks do; each runs the same loop of "steps" of --step-ms each (default 100 and 1 ms): a
sleep, the step's compute happening elsewhere (a GPU) while the host waits, or with --work spin a busy
loop on the CPU. After each step the loop calls should_stop() on a Run made with the mode's check_every
(none: no call). Every mode runs --rounds times, interleaved, --seconds each; a mode's time per step is
the slowest rank's (the job moves at its pace), the median over the rounds. Overhead: time per step
less the no-check loop's, per step and as a share of the step.

Figures are printed and written to bench/should_stop/out/results.md; nothing is asserted. CPU gloo has
no host sync to pay; with NCCL each boundary also waits for the GPU queue (tensor.item()), which only
makes a per-step check dearer.

Run: .venv/bin/python bench/should_stop/run.py [--step-ms 100,1 --check-every 50 --ranks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "results.md"
MODES = ("none", "every step", "boundary")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-ms", default="100,1", help="comma-separated step times (%(default)s)")
    parser.add_argument("--check-every", type=int, default=50, help="the boundary mode's N (%(default)s)")
    parser.add_argument("--ranks", type=int, default=2, help="processes in the gloo group (%(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="each mode's time per round, s")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all modes, interleaved")
    parser.add_argument("--work", choices=["sleep", "spin"], default="sleep", help="what a step does")
    parser.add_argument("--out", type=Path, default=OUT, help="the results table (default: %(default)s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one rank, env://
    return parser.parse_args(argv)


def steps_of(step_s: float, seconds: float) -> int:
    return max(20, round(seconds / step_s))


def worker(args: argparse.Namespace) -> int:
    """One rank: each (step, round, mode) loop; prints {step_ms, mode, round, seconds, steps} lines."""
    import torch.distributed as dist

    from stopline_trainer import Config, Run, distributed

    distributed.init_from_env()
    rank = dist.get_rank()
    every = {"every step": 1, "boundary": args.check_every}
    with tempfile.TemporaryDirectory(prefix="stopline-bench-stop-") as folder:
        for step_ms in [float(s) for s in args.step_ms.split(",")]:
            step_s = step_ms / 1000
            steps = steps_of(step_s, args.seconds)
            for round_ in range(args.rounds):
                for mode in MODES:
                    config = Config(
                        metrics_port=0,
                        bind_address="127.0.0.1",
                        rank=rank,
                        world_size=dist.get_world_size(),
                        termination_log=Path(folder) / f"log-{rank}",
                    )
                    run = Run(config, handle_signals=False, check_every=every.get(mode, 1))
                    check = mode != "none"
                    dist.barrier()
                    started = time.perf_counter()
                    for _ in range(steps):
                        if args.work == "sleep":
                            time.sleep(step_s)
                        else:
                            until = time.perf_counter() + step_s
                            while time.perf_counter() < until:
                                pass
                        if check and run.should_stop():
                            raise AssertionError("nobody asked to stop")
                    elapsed = time.perf_counter() - started
                    run.close()
                    row = {"step_ms": step_ms, "mode": mode, "round": round_, "steps": steps}
                    print(json.dumps({**row, "seconds": elapsed}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


@dataclass(frozen=True)
class Row:
    step_ms: float
    steps: int
    per_step_s: dict[str, float]  # mode -> the slowest rank's time per step, median of the rounds

    def overhead_us(self, mode: str) -> float:
        return (self.per_step_s[mode] - self.per_step_s["none"]) * 1e6


def measure(args: argparse.Namespace) -> list[Row]:
    """Start the ranks, wait for them, and reduce their lines to one row per step time."""
    from stopline_local.controlplane import free_port

    env = {
        **os.environ,
        "WORLD_SIZE": str(args.ranks),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    forwarded = ["--step-ms", args.step_ms, "--check-every", str(args.check_every)]
    forwarded += ["--seconds", str(args.seconds), "--rounds", str(args.rounds), "--work", args.work]
    ranks = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", *forwarded],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(args.ranks)
    ]
    outputs = [rank.communicate()[0] for rank in ranks]
    failed = [rank.returncode for rank in ranks if rank.returncode]
    if failed:
        raise SystemExit(f"a rank failed: exit codes {[rank.returncode for rank in ranks]}")
    slowest: dict[tuple[float, str, int], float] = {}  # (step_ms, mode, round) -> slowest rank's s/step
    steps: dict[float, int] = {}
    for output in outputs:
        for line in output.splitlines():
            r = json.loads(line)
            key = (r["step_ms"], r["mode"], r["round"])
            slowest[key] = max(slowest.get(key, 0.0), r["seconds"] / r["steps"])
            steps[r["step_ms"]] = r["steps"]
    rows = []
    for step_ms in steps:
        per_step = {
            mode: statistics.median(s for (ms, m, _), s in slowest.items() if (ms, m) == (step_ms, mode))
            for mode in MODES
        }
        rows.append(Row(step_ms, steps[step_ms], per_step))
    return rows


def table(rows: list[Row], check_every: int) -> str:
    header = (
        "| step | steps a round | no check, ms a step | every step: overhead µs a step | share "
        f"| every {check_every} steps: overhead µs a step | share |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in rows:
        base = r.per_step_s["none"]
        cells = [
            f"{r.step_ms:g} ms",
            str(r.steps),
            f"{base * 1e3:.3f}",
            f"{r.overhead_us('every step'):.1f}",
            f"{r.overhead_us('every step') / (base * 1e6):.2%}",
            f"{r.overhead_us('boundary'):.1f}",
            f"{r.overhead_us('boundary') / (base * 1e6):.2%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.check_every < 1 or args.ranks < 2:
        print("--check-every must be at least 1 and --ranks at least 2", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    result = table(measure(args), args.check_every)
    print(result)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# bench/should_stop, {datetime.now().isoformat(timespec='seconds')}\n\n"
        f"`{' '.join(['bench/should_stop/run.py', *(argv if argv is not None else sys.argv[1:])])}` on "
        f"{os.cpu_count()} CPUs: {args.ranks} gloo ranks, steps of {args.work}, {args.rounds} rounds of "
        f"{args.seconds:g} s a mode, the slowest rank's time, median of the rounds; {load}.\n\n{result}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
