"""A real Prometheus: Debian's build from `make testenv`, on 127.0.0.1, scraping file_sd targets.

Debian's Prometheus has no kubernetes_sd, so whoever plays the kubelet writes the targets: a trainer pod
is one target with the labels the chart's PodMonitor gives it (namespace, stopline_job, pod, rank).

with running_prometheus(tmp_path) as prometheus:   # prometheus.url, prometheus.add_target(...)
    ...
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stopline_local.controlplane import built_binary, die_with_parent, free_port, stop_process, wait_until

SCRAPE_INTERVAL = "1s"


@dataclass
class Prometheus:
    url: str
    targets_file: Path
    log: Path
    targets: dict[str, dict[str, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the test kubelet's threads

    def add_target(self, address: str, labels: Mapping[str, str], metrics_path: str = "/metrics") -> None:
        """Scrape host:port from now on with these labels (file_sd notices the rewrite by inotify)."""
        with self.lock:
            self.targets[address] = {**labels, "__metrics_path__": metrics_path}
            self._write()

    def add_trainer(self, address: str, namespace: str, job: str, pod: str, rank: str = "0") -> None:
        """A trainer pod as the chart's PodMonitor makes it a target: its labels say which job and rank."""
        self.add_target(address, {"namespace": namespace, "stopline_job": job, "pod": pod, "rank": rank})

    def remove_target(self, address: str) -> None:
        with self.lock:
            self.targets.pop(address, None)
            self._write()

    def _write(self) -> None:
        groups = [{"targets": [address], "labels": labels} for address, labels in self.targets.items()]
        temporary = self.targets_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(groups))
        temporary.replace(self.targets_file)  # atomic: Prometheus never reads half a file

    def query(self, promql: str) -> list[Any]:
        """An instant query's result vector."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.load(response)["data"]["result"])

    def details(self) -> str:
        """The end of Prometheus' log, for a failed wait."""
        return "prometheus log:\n" + self.log.read_text(errors="replace")[-2000:]


@contextmanager
def running_prometheus(workdir: Path, deadline_s: float = 60.0) -> Iterator[Prometheus]:
    """Start Prometheus on a free loopback port; stopped (and its data left in workdir) on exit."""
    binary = built_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    targets = workdir / "targets.json"
    targets.write_text("[]")
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
                "scrape_configs": [
                    {
                        "job_name": "pods",
                        "honor_labels": True,  # a DCGM exporter's own namespace/pod labels win
                        "scrape_timeout": SCRAPE_INTERVAL,
                        "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--query.lookback-delta=5s",  # a target gone for 5 s has no value, as a stopped pod should
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", targets, log)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {process.returncode}\n{prometheus.details()}")
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)

        wait_until(ready, deadline_s, "prometheus /-/ready", retry_on=(OSError,), details=prometheus.details)
        yield prometheus
    finally:
        stop_process(process)
