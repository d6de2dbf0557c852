"""A real S3-compatible server for tests: versitygw (posix backend) from `make testenv`, on 127.0.0.1.

with running_s3_server(tmp_path) as s3:  # s3.endpoint, s3.env(), s3.client()
    ...
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stopline_local.controlplane import built_binary, free_port, stop_process

ACCESS_KEY = "stopline-test"
SECRET_KEY = "stopline-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    root: Path

    def env(self) -> dict[str, str]:
        """The variables a trainer reads to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )


def _ready(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint + "/", timeout=1).close()
    except urllib.error.HTTPError:
        return True  # an S3 error document (403 without credentials) means it is serving
    except OSError:
        return False
    return True


@contextmanager
def running_s3_server(workdir: Path, deadline_s: float = 30.0) -> Iterator[S3Server]:
    """Start versitygw on a free loopback port over workdir; stop it even when the body raises."""
    binary = built_binary("versitygw")
    root, sidecar = workdir / "s3-root", workdir / "s3-meta"
    root.mkdir(parents=True)
    sidecar.mkdir(parents=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = workdir / "versitygw.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "--port", f"127.0.0.1:{port}", "--access", ACCESS_KEY, "--secret", SECRET_KEY,
             "--region", REGION, "--quiet", "posix", "--sidecar", str(sidecar), str(root)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        until = time.monotonic() + deadline_s
        while not _ready(endpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"versitygw exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > until:
                raise TimeoutError(f"versitygw not serving on {endpoint} after {deadline_s}s")
            time.sleep(0.05)
        yield S3Server(endpoint, root)
    finally:
        stop_process(proc, 10)
