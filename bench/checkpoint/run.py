"""Stop to durable weights: how long a stopped trainer takes to make its checkpoint durable, against the
time the same disk (or the same object store) takes for the same bytes. The design's target:
stop→durable <= 1.2 x bytes/bandwidth + one step (the stop waits for the step in progress).

For each model width (--hidden) and each target (--targets: `file`, a folder on the disk of --dir; `s3`,
the local S3 server, versitygw, whose objects land on that same disk), in one run:
1. start the example trainer (trainer-image/examples/train.py) as its own process with the env the
   operator injects and --save-every 0, so the save the stop asks for is its only one;
2. one step's time: stopline_step on its /metrics, between two moments it was seen to move, at least a
   second and three steps apart;
3. POST /stop with the control token, then time until the manifest last.json exists: the trainer writes
   it only after the weights are durable (fsync, rename, fsync of the folder; or CompleteMultipartUpload);
4. the baseline for the manifest's byte count, right after, on the same disk or server:
   `dd if=/dev/zero bs=4M conv=fsync` into the same folder; for s3, a plain boto3 upload_file of a file of
   that size, multipart with the trainer's part size and as many parts at once as the trainer sends.

"save s" is Run.save's own time by its log line: stop→durable less the wait for the step in progress.
"stop→exit s" adds the process's exit, after which the kubelet reads the termination message. Figures
are printed and written to bench/checkpoint/out/results.md; nothing is asserted. Each trainer runs
one thread (OMP_NUM_THREADS=1), as the trainer tier runs them. --hidden 9128 saves ~1.0 GB (weights and
Adam's two moments: 3 x 4 bytes x ~83.6 M parameters); 512 saves ~3.4 MB.

Run: make bench-checkpoint (or .venv/bin/python bench/checkpoint/run.py --hidden 512,9128 --targets file,s3).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from stopline_local.controlplane import free_port, stop_process
from stopline_local.s3server import S3Server, running_s3_server
from stopline_trainer.storage.s3 import PARTS_IN_FLIGHT

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "trainer-image" / "examples" / "train.py"
OUT = Path(__file__).resolve().parent / "out" / "results.md"
TOKEN = "bench-token-0123456789"
BUCKET = "bench"
MANIFEST = "last.json"
PART_SIZE = 64 * 1024 * 1024  # the trainer's default STOPLINE_S3_PART_SIZE, passed to it explicitly
TARGET_FACTOR = 1.2
MIN_STEP_WINDOW_S = 1.0
MIN_STEPS = 3
POLL_S = 0.01  # the resolution of stop→durable and of the step time
SAVED = re.compile(r"stopline: saved .* in ([0-9.]+)s$", re.MULTILINE)  # Run.save's own log line


@dataclass(frozen=True)
class Row:
    target: str
    hidden: int
    size: int
    stop_to_durable_s: float
    stop_to_exit_s: float
    save_s: float | None
    baseline: str
    baseline_s: float
    step_s: float

    @property
    def ratio(self) -> float:
        return self.stop_to_durable_s / self.baseline_s

    @property
    def meets_target(self) -> bool:
        return self.stop_to_durable_s <= TARGET_FACTOR * self.baseline_s + self.step_s


class Trainer:
    """The example trainer in its own process, on a free loopback port, training until it is stopped."""

    def __init__(self, workdir: Path, hidden: int, env: dict[str, str], name: str) -> None:
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        full_env = {
            **os.environ,
            "STOPLINE_JOB": "bench",
            "STOPLINE_NAMESPACE": "bench",
            "STOPLINE_METRICS_PORT": str(self.port),
            "STOPLINE_BIND_ADDRESS": "127.0.0.1",
            "STOPLINE_CONTROL_TOKEN": TOKEN,
            "STOPLINE_TERMINATION_LOG": str(workdir / f"{name}.termination-log"),
            "OMP_NUM_THREADS": "1",
            **env,
        }
        # one epoch longer than any run: no epoch-end validation or save competes with the measured one
        args = ["--hidden", str(hidden), "--epochs", "1", "--steps-per-epoch", "1000000000"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(EXAMPLE), *args, "--save-every", "0"],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the trainer exited early with {self.proc.returncode}:\n{self.log()}")

    def step(self) -> float | None:
        """stopline_step on /metrics; None while the server is not up yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                body = r.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "stopline_step":
                    return float(sample.value)
        return None

    def seconds_per_step(self, deadline_s: float) -> float:
        """Time between two moments the step was seen to move, divided by the steps between them."""
        moves: list[tuple[float, float]] = []
        last: float | None = None
        until = time.monotonic() + deadline_s
        while time.monotonic() < until:
            self.check_running()
            step, now = self.step(), time.monotonic()
            if step is not None and step != last:
                if last is not None:
                    moves.append((now, step))
                last = step
            if moves:
                (t0, s0), (t1, s1) = moves[0], moves[-1]
                if t1 - t0 >= MIN_STEP_WINDOW_S and s1 - s0 >= MIN_STEPS:
                    return (t1 - t0) / (s1 - s0)
            time.sleep(POLL_S)
        raise TimeoutError(f"the trainer made no {MIN_STEPS} steps in {deadline_s}s:\n{self.log()}")

    def save_seconds(self) -> float | None:
        """How long Run.save took by its own log line: stop→durable less the wait for the step to end."""
        found = SAVED.findall(self.log())
        return float(found[-1]) if found else None

    def post_stop(self) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/stop",
            data=b'{"reason": "bench/checkpoint"}',
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            if r.status != 202:
                raise RuntimeError(f"POST /stop answered {r.status}")


def wait_for(check: Callable[[], bool], trainer: Trainer, deadline_s: float, what: str) -> float:
    """Poll until check() holds; returns the monotonic time it was first seen to."""
    until = time.monotonic() + deadline_s
    while not check():
        if trainer.proc.poll() not in (None, 0):
            raise RuntimeError(f"the trainer exited with {trainer.proc.returncode}:\n{trainer.log()}")
        if time.monotonic() > until:
            raise TimeoutError(f"no {what} after {deadline_s}s:\n{trainer.log()}")
        time.sleep(POLL_S)
    return time.monotonic()


def stop_and_time(
    trainer: Trainer, manifest_exists: Callable[[], bool], deadline_s: float
) -> tuple[float, float, float, float | None]:
    """(one step s, stop→durable s, stop→exit s, save s) of a trainer that is training."""
    step_s = trainer.seconds_per_step(deadline_s)
    stopped_at = time.monotonic()
    trainer.post_stop()
    durable_at = wait_for(manifest_exists, trainer, deadline_s, "manifest")
    code = trainer.proc.wait(deadline_s)
    exited_at = time.monotonic()
    if code != 0:
        raise RuntimeError(f"the trainer exited with {code}:\n{trainer.log()}")
    return step_s, durable_at - stopped_at, exited_at - stopped_at, trainer.save_seconds()


def dd(path: Path, size: int) -> float:
    """Seconds for dd to write `size` zero bytes to `path` and fsync them."""
    started = time.monotonic()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=4M", f"count={size}", "iflag=count_bytes", "conv=fsync"],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def measure_file(workdir: Path, hidden: int, deadline_s: float) -> Row:
    folder = workdir / f"file-{hidden}"
    trainer = Trainer(workdir, hidden, {"STOPLINE_CHECKPOINT_URI": str(folder)}, f"file-{hidden}")
    try:
        step_s, durable_s, exit_s, save_s = stop_and_time(trainer, (folder / MANIFEST).exists, deadline_s)
    finally:
        if trainer.proc.poll() is None:
            stop_process(trainer.proc, 5)
    size = int(json.loads((folder / MANIFEST).read_bytes())["bytes"])
    baseline_s = dd(folder / "ddtest", size)
    shutil.rmtree(folder)  # the weights and the dd file: the next run starts on an empty folder
    return Row("file", hidden, size, durable_s, exit_s, save_s, "dd conv=fsync", baseline_s, step_s)


def measure_s3(workdir: Path, s3: S3Server, hidden: int, deadline_s: float) -> Row:
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import ClientError

    client = s3.client()
    prefix = f"run-{hidden}"

    def manifest_exists() -> bool:
        try:
            client.head_object(Bucket=BUCKET, Key=f"{prefix}/{MANIFEST}")
        except ClientError:
            return False
        return True

    env = {
        **s3.env(),
        "STOPLINE_CHECKPOINT_URI": f"s3://{BUCKET}/{prefix}",
        "STOPLINE_S3_PART_SIZE": str(PART_SIZE),
    }
    trainer = Trainer(workdir, hidden, env, f"s3-{hidden}")
    try:
        step_s, durable_s, exit_s, save_s = stop_and_time(trainer, manifest_exists, deadline_s)
    finally:
        if trainer.proc.poll() is None:
            stop_process(trainer.proc, 5)
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/{MANIFEST}")["Body"].read())
    size = int(manifest["bytes"])
    source = workdir / "upload-source"
    dd(source, size)
    # multipart from the first byte, parts the trainer's size, as many at once: what the trainer does
    config = TransferConfig(
        multipart_threshold=1, multipart_chunksize=PART_SIZE, max_concurrency=PARTS_IN_FLIGHT
    )
    started = time.monotonic()
    client.upload_file(str(source), BUCKET, f"{prefix}/upload", Config=config)
    baseline_s = time.monotonic() - started
    source.unlink()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    return Row("s3", hidden, size, durable_s, exit_s, save_s, "boto3 upload_file", baseline_s, step_s)


HEADER = (
    "| target | --hidden | bytes | stop→durable s | save s | stop→exit s | baseline | baseline s | ratio "
    f"| one step s | ≤ {TARGET_FACTOR} x baseline + step |"
)


def table(rows: list[Row]) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in rows:
        cells = [
            r.target,
            str(r.hidden),
            f"{r.size / 1e6:,.1f} MB",
            f"{r.stop_to_durable_s:.3f}",
            "?" if r.save_s is None else f"{r.save_s:.3f}",
            f"{r.stop_to_exit_s:.3f}",
            r.baseline,
            f"{r.baseline_s:.3f}",
            f"{r.ratio:.2f}",
            f"{r.step_s:.4f}",
            "yes" if r.meets_target else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--hidden",
        default="512,9128",
        help="comma-separated model widths (default: %(default)s: ~3.4 MB, ~1 GB)",
    )
    parser.add_argument("--targets", default="file,s3", help="file, s3 or both (default: %(default)s)")
    parser.add_argument("--dir", type=Path, default=None, help="the disk to measure: a temp folder under it")
    parser.add_argument("--deadline", type=float, default=600, help="longest wait for any phase, s")
    parser.add_argument("--out", type=Path, default=OUT, help="the results table (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    widths = [int(h) for h in args.hidden.split(",") if h.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"file", "s3"}
    if unknown:
        print(f"unknown targets {sorted(unknown)}: file, s3", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with ExitStack() as stack:
        workdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="stopline-bench-ckpt-", dir=args.dir))
        )
        s3: S3Server | None = None
        if "s3" in targets:
            s3 = stack.enter_context(running_s3_server(workdir))
            s3.client().create_bucket(Bucket=BUCKET)
        for hidden in widths:
            for target in targets:
                if s3 is not None and target == "s3":
                    row = measure_s3(workdir, s3, hidden, args.deadline)
                else:
                    row = measure_file(workdir, hidden, args.deadline)
                rows.append(row)
                print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    result = table(rows)
    print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# bench/checkpoint, {datetime.now().isoformat(timespec='seconds')}\n\n"
        f"`{' '.join(['bench/checkpoint/run.py', *(argv if argv is not None else sys.argv[1:])])}` on "
        f"{os.cpu_count()} CPUs, under {workdir.parent}; one trainer thread.\n\n{result}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
