"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and kube-controller-manager.

The binaries come from `make testenv` (stopline_local/testenv/build.sh). Every process binds to loopback on a
free port, keeps its data in a temporary folder, dies with its parent (PR_SET_PDEATHSIG) and is stopped by
`ControlPlane.stop()`, so an interrupted test run, demo or `make up` leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[2]  # the checkout: this file is local/stopline_local/controlplane.py
K8S_VERSION = os.environ.get("K8S_VERSION", "1.34.4")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "3.6.16")
TESTENV = Path(
    os.environ.get(
        "STOPLINE_TESTENV",
        Path.home() / ".cache" / "stopline" / "testenv" / f"{K8S_VERSION}-etcd{ETCD_VERSION}",
    )
)
ADMIN_TOKEN = "stopline-admin-token"
T = TypeVar("T")


class MissingTestenv(RuntimeError):
    """A binary of the testenv is not built."""


def built_binary(name: str) -> Path:
    path = TESTENV / "bin" / name
    if not os.access(path, os.X_OK):
        raise MissingTestenv(f"{path} is missing: run `make testenv` (it builds the real control plane once)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the process that started it dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `grace_s`; returns once it is gone."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(
    check: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.2,
    retry_on: tuple[type[Exception], ...] = (Exception,),
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy and return that; fail naming `what` after `timeout` s.

    Exceptions in `retry_on` count as "not yet" (a server still starting refuses or resets connections);
    any other exception fails at once. `details` is called on timeout, so a log it reads is the latest.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except retry_on as error:
            last_error = error
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    message = f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})"
    raise TimeoutError(f"{message}\n{details()}" if details else message)


@dataclass
class ControlPlane:
    """Processes of one control plane; `start()` returns once the apiserver is ready and Jobs reconcile."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="stopline-cp-")))
    with_controller_manager: bool = True
    apiserver_args: list[str] = field(default_factory=list)  # appended: a benchmark's audit log, say
    controller_manager_args: list[str] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    apiserver_port: int = 0  # 0: a free one
    # where the apiserver binds and what it advertises; the real node (stopline_local.node) puts it on the
    # `kubernetes` Service's ClusterIP, port 443, so pods reach it without kube-proxy
    address: str = "127.0.0.1"
    service_cluster_ip_range: str = "10.0.0.0/24"  # allocated in etcd only; nothing routes to it
    # no node lifecycle without a real kubelet: it would taint and evict the local kubelet's node; the real
    # node needs it (it lifts the not-ready taint the kubelet registers with)
    disabled_controllers: tuple[str, ...] = (
        "nodeipam",
        "nodelifecycle",
        "cloud-node-lifecycle",
        "service",
        "route",
    )

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    def start(self, timeout: float = 120) -> ControlPlane:
        binaries = {name: built_binary(name) for name in ("etcd", "kube-apiserver", "kubectl")}
        if self.with_controller_manager:
            binaries["kube-controller-manager"] = built_binary("kube-controller-manager")
        try:
            self._start_etcd(binaries["etcd"], timeout)
            self._start_apiserver(binaries["kube-apiserver"], timeout)
            if self.with_controller_manager:
                self._start_controller_manager(binaries["kube-controller-manager"], timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )

    def _check_alive(self, name: str) -> None:
        code = self.processes[name].poll()
        if code is not None:
            tail = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {code}; last log lines:\n{tail}")

    def _start_etcd(self, etcd: Path, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(etcd),
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a test store: speed over durability
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            self._check_alive("etcd")
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                return b'"health":"true"' in response.read()

        wait_until(healthy, timeout, "etcd /health")

    def _start_apiserver(self, apiserver: Path, timeout: float) -> None:
        self.apiserver_port = self.apiserver_port or free_port()
        certs = self.root / "certs"
        certs.mkdir()
        sa_key = certs / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True, timeout=60
        )
        self.sa_key = sa_key
        tokens = self.root / "tokens.csv"
        tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
        self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={certs}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
                *self.apiserver_args,
            ],
        )
        self._write_kubeconfig()

        def ready() -> bool:
            self._check_alive("kube-apiserver")
            request = urllib.request.Request(
                f"{self.server}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            with urllib.request.urlopen(request, timeout=3, context=_insecure_tls()) as response:
                return bool(response.status == 200)

        wait_until(ready, timeout, "kube-apiserver /readyz")

    def _start_controller_manager(self, kcm: Path, timeout: float) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                str(kcm),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                f"--service-account-private-key-file={self.sa_key}",
                "--controllers=*," + ",".join(f"-{name}" for name in self.disabled_controllers),
                "--v=1",
                *self.controller_manager_args,
            ],
        )

        def default_service_account_made() -> bool:
            """The controller manager is ready for us once it has made the default ServiceAccount."""
            self._check_alive("kube-controller-manager")
            found = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
            return found.returncode == 0

        wait_until(
            default_service_account_made,
            timeout,
            "kube-controller-manager to create the default ServiceAccount",
            interval=0.5,
        )

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig, ADMIN_TOKEN)

    def write_kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig for this apiserver that authenticates with `token` (admin, or a ServiceAccount)."""
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: stopline-local
  cluster: {{server: "{self.server}", insecure-skip-tls-verify: true}}
users:
- name: user
  user: {{token: {token}}}
contexts:
- name: stopline-local
  context: {{cluster: stopline-local, user: user, namespace: default}}
current-context: stopline-local
"""
        )
        return path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the testenv's kubectl against this control plane."""
        result = subprocess.run(
            [str(built_binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def install_crd(self, path: Path, name: str = "trainingjobs.stopline.dev", timeout_s: float = 60) -> None:
        """Apply a CRD as a user does and wait until it is Established. Polled, not `kubectl wait`: that
        fails at once ("accessor error") while the new CRD has no status yet."""
        self.kubectl("apply", "--server-side", "-f", str(path))
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'

        def established() -> bool:
            found = self.kubectl("get", "crd", name, "-o", f"jsonpath={jsonpath}", check=False)
            return found.stdout.strip() == "True"

        wait_until(established, timeout_s, f"CRD {name} Established")

    def stop(self) -> None:
        """Stop every process (apiserver first), then delete the data folder."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            process = self.processes.pop(name, None)
            if process is not None:
                stop_process(process)
        shutil.rmtree(self.root, ignore_errors=True)


def _insecure_tls() -> ssl.SSLContext:
    """The apiserver serves a self-signed certificate it made itself; its clients trust it by address."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
