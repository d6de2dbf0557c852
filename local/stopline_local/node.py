"""A real one-node Kubernetes cluster on this machine, as processes: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (stopline_local.controlplane), containerd with runc, a kubelet,
the bridge CNI plugin and CoreDNS. Pods run in real containers from images imported into containerd (no
registry can be reached: every image, the pause sandbox and CoreDNS's included, is built here).

The binaries come from `make testenv` and `make testenv-node` (testenv/build-node.sh). It needs root.

Addresses (none of them routed beyond this machine):

- 100.97.0.0/24 is the Service range. Its first IP, 100.97.0.1, is put on `lo`: the apiserver listens there
  on 443 and the kubelet on 10250, so the `kubernetes` Service's ClusterIP is the apiserver itself and pods
  reach it without kube-proxy (there is no iptables on this machine to program). 100.97.0.10, on `lo`
  too, is CoreDNS (a hostNetwork pod), the kubelet's clusterDNS.
- 100.96.0.0/24 is the pod network: the bridge `stopline0` (gateway 100.96.0.1) made by the bridge plugin,
  a veth per pod, IPs from host-local. No masquerading, no hostPort (portmap needs iptables).

`stop()` (Ctrl-C of `make cluster`) kills every container, stops every process it started, unmounts what
was mounted under its folder, deletes the bridge and the addresses on `lo`, then the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from stopline_local import oci
from stopline_local.controlplane import (
    ADMIN_TOKEN,
    K8S_VERSION,
    REPO,
    TESTENV,
    ControlPlane,
    die_with_parent,
    free_port,
    stop_process,
    wait_until,
)

CNI_VERSION = os.environ.get("CNI_VERSION", "1.9.0")
COREDNS_VERSION = os.environ.get("COREDNS_VERSION", "1.14.7")
NODEENV = Path(
    os.environ.get(
        "STOPLINE_NODEENV",
        Path.home()
        / ".cache"
        / "stopline"
        / "node"
        / f"{K8S_VERSION}-cni{CNI_VERSION}-coredns{COREDNS_VERSION}",
    )
)
NODE_NAME = "stopline-node"
NODE_IP = "100.97.0.1"  # the `kubernetes` Service's ClusterIP, the apiserver's and the kubelet's address
DNS_IP = "100.97.0.10"
SERVICE_CIDR = "100.97.0.0/24"
POD_CIDR = "100.96.0.0/24"
POD_GATEWAY = "100.96.0.1"
BRIDGE = "stopline0"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "stopline.local/pause:1"
COREDNS_IMAGE = f"stopline.local/coredns:{COREDNS_VERSION}"
CONTAINERD_NAMESPACE = "k8s.io"  # the CRI plugin's
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"  # the kubelet's pod cgroups, in every v1 hierarchy (cgroupfs driver)
STOP_GRACE_S = 10
# the running node (one per machine: its addresses are fixed): `make images` loads into its containerd,
# `make cluster-down` sends SIGTERM to the process that runs it
NODE_STATE = Path(tempfile.gettempdir()) / "stopline-node.json"


class MissingNodeenv(RuntimeError):
    """A binary of the node is not built."""


class NodeRunning(RuntimeError):
    """Another node (or what one left) is on this machine."""


def node_binary(name: str) -> Path:
    path = NODEENV / "bin" / name
    if not os.access(path, os.X_OK):
        raise MissingNodeenv(
            f"{path} is missing: run `make testenv-node` (it builds the node's binaries once)"
        )
    return path


# The disk a node run takes at its peak, under the temporary folder: containerd's content store and its
# unpacked snapshots of the two images hold 5.9 GB each (measured). A disk that fills mid-run fails every
# story: CI's machine first reported DiskPressure, then "no space left on device" importing the trainer.
ROOM_NEEDED = 13 * 2**30


def warm() -> bool:
    """Whether the node's binaries and the images' bases are built (CI runs the node tier only then)."""
    from stopline_local.images import IMAGES

    built = all(os.access(NODEENV / "bin" / name, os.X_OK) for name in ("kubelet", "coredns", "containerd"))
    return built and (IMAGES / "torch" / "rootfs").is_dir() and os.geteuid() == 0


def why_not_run() -> str | None:
    """Why CI skips the node tier on this machine (cold caches, not root, too little disk), or None."""
    if not warm():
        return "cache cold or not root (make testenv-node images-base warms it, as root)"
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < ROOM_NEEDED:
        return (
            f"{free / 2**30:.1f} GiB free under {tempfile.gettempdir()}, a node run needs "
            f"{ROOM_NEEDED / 2**30:.0f} GiB (its images' layers, stored and unpacked)"
        )
    return None


def run(*argv: str, check: bool = True, timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder`, deepest first (the order to unmount them in)."""
    prefix = str(folder.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=lambda point: point.count("/"), reverse=True)


def kubepods_cgroups() -> list[Path]:
    """The kubelet's pod cgroups in every hierarchy, deepest first (the order to remove them in)."""
    found = [path for hierarchy in CGROUP_ROOT.iterdir() for path in hierarchy.glob(f"{KUBEPODS}*")]
    found += [path for top in list(found) for path in top.rglob("*") if path.is_dir()]
    return sorted({path for path in found if path.is_dir()}, key=lambda path: len(path.parts), reverse=True)


def _cgroup_empty(cgroup: Path) -> bool:
    try:
        return not (cgroup / "cgroup.procs").read_text().strip()
    except FileNotFoundError:  # removed already (the kubelet's own cleanup)
        return True


def pause_image(work: Path) -> Path:
    """The sandbox image: testenv/pause.go's static binary alone, as /pause."""
    layer = oci.tar_layer(work / "pause-layer.tar", {"/pause": node_binary("pause")})
    return oci.write_archive(work / "pause.tar", PAUSE_IMAGE, [layer], oci.ImageConfig(entrypoint=["/pause"]))


def coredns_image(work: Path) -> Path:
    """CoreDNS on an empty base: the binary, and the Corefile mounted from a ConfigMap."""
    layer = oci.tar_layer(work / "coredns-layer.tar", {"/coredns": node_binary("coredns")})
    config = oci.ImageConfig(entrypoint=["/coredns"], cmd=["-conf", "/etc/coredns/Corefile"])
    return oci.write_archive(work / "coredns.tar", COREDNS_IMAGE, [layer], config)


def coredns_manifests() -> list[dict[str, object]]:
    """CoreDNS as a hostNetwork Deployment on DNS_IP:53, reading Services and EndpointSlices (so a headless
    Service's `<hostname>.<subdomain>.<namespace>.svc` names resolve); no cache, so a pod's name resolves as
    soon as it has an IP. Names outside the cluster get NXDOMAIN: pods here reach nothing outside."""
    labels = {"k8s-app": "kube-dns"}
    corefile = (
        f".:53 {{\n    bind {DNS_IP}\n    errors\n    health {DNS_IP}:8080\n    ready {DNS_IP}:8181\n"
        f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{\n        pods insecure\n"
        "        fallthrough in-addr.arpa\n    }\n}\n"
    )
    meta = {"name": "coredns", "namespace": "kube-system"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", **meta}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "hostNetwork": True,
                        "dnsPolicy": "Default",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": COREDNS_IMAGE,
                                "imagePullPolicy": "Never",
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                                "readinessProbe": {
                                    "httpGet": {"host": DNS_IP, "port": 8181, "path": "/ready"},
                                    "periodSeconds": 2,
                                },
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": DNS_IP,  # reserved for it; CoreDNS itself answers there, not a proxy
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        },
    ]


@dataclass
class Node:
    """Every process and host change of one node; `stop()` undoes each one `start()` made, even half-way."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="stopline-node-")))
    plane: ControlPlane = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)  # put on `lo` by start()
    kubelet_args: list[str] = field(default_factory=list)  # appended: a test's extra flags
    owns_host: bool = False  # set once start() found no other node: stop() then cleans the host's side too

    def __post_init__(self) -> None:
        self.plane = ControlPlane(
            root=self.root / "control-plane",
            address=NODE_IP,
            apiserver_port=443,
            service_cluster_ip_range=SERVICE_CIDR,
            disabled_controllers=("nodeipam", "cloud-node-lifecycle", "service", "route"),
            # logs, exec, port-forward: the node's name resolves nowhere, its InternalIP is NODE_IP
            apiserver_args=["--kubelet-preferred-address-types=InternalIP"],
        )
        self.plane.root.mkdir(parents=True, exist_ok=True)

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl(*args, input=input, check=check)

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """containerd's client, in the CRI plugin's namespace (where the kubelet's images and pods are)."""
        return run(
            str(node_binary("ctr")),
            f"--address={self.socket}",
            f"--namespace={CONTAINERD_NAMESPACE}",
            *args,
            check=check,
            timeout=timeout,
        )

    def start(self, say: Callable[[str], None] = print) -> Node:
        if os.geteuid() != 0:
            raise PermissionError("the real node needs root: containers, mounts, a bridge, addresses on lo")
        for name in ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "kubelet", "kube-scheduler"):
            node_binary(name)
        self._refuse_a_second_node()
        self.owns_host = True
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for address in (NODE_IP, DNS_IP):
                run("ip", "addr", "add", f"{address}/32", "dev", "lo")
                self.addresses.append(address)
            say(f"starting etcd, kube-apiserver ({NODE_IP}:443), kube-controller-manager in {self.root}")
            self.plane.controller_manager_args = [
                f"--root-ca-file={self.plane.root / 'certs' / 'apiserver.crt'}"
            ]
            self.plane.start()
            self._start_scheduler()
            say("starting containerd (runc) and importing the pause and CoreDNS images built here")
            self._start_containerd()
            images = self.root / "images"
            self.ctr("images", "import", str(pause_image(images)))
            self.ctr("images", "import", str(coredns_image(images)))
            say("starting the kubelet")
            self._start_kubelet()
            self._wait_node_ready()
            say("starting CoreDNS")
            self.kubectl(
                "apply",
                "-f",
                "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": coredns_manifests()}),
            )
            wait_until(self._coredns_ready, 120, "CoreDNS Ready", interval=0.5, details=self.describe_pods)
            NODE_STATE.write_text(
                json.dumps(
                    {"pid": os.getpid(), "kubeconfig": str(self.kubeconfig), "socket": str(self.socket)}
                )
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _refuse_a_second_node(self) -> None:
        """One node per machine (fixed addresses, the kubelet's cgroups): refuse to start beside another one,
        or its leftovers, before touching anything, so that this one's stop() cannot tear the other down."""
        on_lo = run("ip", "-o", "addr", "show", "dev", "lo").stdout
        found = [
            what
            for what, there in (
                (f"{NODE_IP} on lo", f" {NODE_IP}/" in on_lo),
                (str(NODE_STATE), NODE_STATE.exists()),
                (f"the bridge {BRIDGE}", run("ip", "link", "show", BRIDGE, check=False).returncode == 0),
                ("kubepods cgroups", bool(kubepods_cgroups())),
            )
            if there
        ]
        if found:
            shutil.rmtree(self.root, ignore_errors=True)  # nothing of ours in it yet
            raise NodeRunning(
                f"another node runs here or left these behind: {', '.join(found)}; stop it first"
            )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with self.log(name).open("wb") as log:
            self.processes[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                env=env,
            )

    def _check_alive(self, name: str) -> None:
        code = self.processes[name].poll()
        if code is not None:
            tail = self.log(name).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {code}; last log lines:\n{tail}")

    def _start_scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(node_binary("kube-scheduler")),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
        )

    def _start_containerd(self) -> None:
        folder = self.root / "containerd"
        cni = self.root / "cni"
        for path in (folder, cni / "net.d"):
            path.mkdir(parents=True, exist_ok=True)
        bin_dir = NODEENV / "bin"
        (cni / "net.d" / "10-stopline.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "stopline",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(cni / "ipam"),
                            },
                        }
                    ],
                },
                indent=1,
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = folder / "config.toml"
        config.write_text(
            f"""version = 2
root = "{folder / "root"}"
state = "{folder / "state"}"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{folder / "opt"}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # not below containerd's own: root here lacks CAP_SYS_RESOURCE, and runc's "-998" for a sandbox fails
  # ("failed to update /proc/self/oom_score_adj: Permission denied")
  restrict_oom_score_adj = true
  [{cri}.cni]
    bin_dir = "{bin_dir / "cni"}"
    conf_dir = "{cni / "net.d"}"
  [{cri}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [{cri}.containerd.runtimes.runc.options]
      BinaryName = "{bin_dir / "runc"}"
      Root = "{folder / "state" / "runc"}"
      SystemdCgroup = false
"""
        )
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        self._spawn("containerd", [str(bin_dir / "containerd"), f"--config={config}"], env=env)

        def serving() -> bool:
            self._check_alive("containerd")
            return self.ctr("version", check=False).returncode == 0

        wait_until(serving, 60, "containerd to serve", interval=0.3)

    def _start_kubelet(self) -> None:
        folder = self.root / "kubelet"
        folder.mkdir(parents=True, exist_ok=True)
        kubeconfig = self.plane.write_kubeconfig(folder / "kubeconfig", ADMIN_TOKEN)
        config = folder / "config.json"
        config.write_text(json.dumps(self.kubelet_configuration(folder), indent=1))
        self._spawn(
            "kubelet",
            [
                str(node_binary("kubelet")),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={folder / 'root'}",
                f"--cert-dir={folder / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=2",
                *self.kubelet_args,
            ],
        )

    def kubelet_configuration(self, folder: Path) -> dict[str, object]:
        """cgroup v1 (this machine's layout) with the cgroupfs driver; no eviction (a test machine's disk is
        whatever CI gives) and no image garbage collection: an image removed here could not be pulled back."""
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [DNS_IP],
            "podLogsDir": str(folder / "pod-logs"),
            "volumePluginDir": str(folder / "volume-plugins"),
            # "0%" switches a signal off (kubelet's parseThresholdStatement); a signal left out is off too
            # (mergeDefaultEvictionSettings is false), but naming each says so. CI's machine once reported
            # DiskPressure with thresholds of 1% and the node evicted the operator before it started.
            "evictionHard": {
                signal: "0%"
                for signal in (
                    "memory.available",
                    "nodefs.available",
                    "nodefs.inodesFree",
                    "imagefs.available",
                    "imagefs.inodesFree",
                    "containerfs.available",
                    "containerfs.inodesFree",
                )
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "registerNode": True,
        }

    def _wait_node_ready(self) -> None:
        jsonpath = '{.status.conditions[?(@.type=="Ready")].status}'

        def ready() -> bool:
            self._check_alive("kubelet")
            found = self.kubectl("get", "node", NODE_NAME, "-o", f"jsonpath={jsonpath}", check=False)
            return found.stdout.strip() == "True"

        wait_until(ready, 120, f"node {NODE_NAME} Ready", interval=0.5, details=self._kubelet_tail)

    def _kubelet_tail(self) -> str:
        return self.log("kubelet").read_text(errors="replace")[-4000:]

    def _coredns_ready(self) -> bool:
        found = self.kubectl(
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "k8s-app=kube-dns",
            "-o",
            'jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return found.stdout.strip() == "True"

    def describe_pods(self) -> str:
        return self.kubectl("describe", "pods", "-A", check=False).stdout[-4000:]

    def stop(self) -> None:
        """No new pods (scheduler, controller manager), no kubelet; every container killed and its sandbox's
        network namespace unmounted; containerd; leftovers in the pod cgroups killed; every mount under the
        folder; the bridge and the addresses; the control plane; the folder."""
        for name in ("kube-scheduler", "kubelet"):
            process = self.processes.pop(name, None)
            if process is not None:
                stop_process(process, STOP_GRACE_S)
        if "containerd" in self.processes:
            self._remove_containers()
            stop_process(self.processes.pop("containerd"), STOP_GRACE_S)
        if self.owns_host:
            self._kill_pod_cgroups()
            self._kill_shims()
        for point in mounts_under(self.root):
            if run("umount", point, check=False).returncode != 0:
                run("umount", "--lazy", point, check=False)
        if self.owns_host and run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            run("ip", "link", "delete", BRIDGE, check=False)
        while self.addresses:
            run("ip", "addr", "del", f"{self.addresses.pop()}/32", "dev", "lo", check=False)
        self.plane.stop()  # deletes its folder, under ours
        if self.owns_host:
            NODE_STATE.unlink(missing_ok=True)
            self.owns_host = False
        # no deadline: containerd's store holds the images, gigabytes with torch's (over a minute here)
        run("rm", "-rf", "--one-file-system", str(self.root), check=False, timeout=None)

    def _remove_containers(self) -> None:
        """Kill every task (pod containers and sandboxes), then delete them and their containers, so the
        shims exit and the network namespaces (bind mounts under containerd's state) can be unmounted."""
        tasks = self.ctr("tasks", "list", "--quiet", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, check=False)
        for task in tasks:
            self.ctr("tasks", "delete", "--force", task, check=False)
        containers = self.ctr("containers", "list", "--quiet", check=False).stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, check=False)

    def _kill_pod_cgroups(self) -> None:
        for cgroup in kubepods_cgroups():
            procs = cgroup / "cgroup.procs"
            for pid in procs.read_text().split() if procs.exists() else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for cgroup in kubepods_cgroups():
            wait_until(functools.partial(_cgroup_empty, cgroup), 10, f"{cgroup} empty")
            with contextlib.suppress(FileNotFoundError):
                cgroup.rmdir()

    def _kill_shims(self) -> None:
        """A shim whose task could not be deleted outlives containerd: find it by our socket in its argv."""
        needle = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in argv and needle in argv:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)


def instructions(node: Node) -> str:
    setup = [
        (f"export KUBECONFIG={shlex.quote(str(node.kubeconfig))}", "an admin kubeconfig"),
        (
            f'export PATH={shlex.quote(str(TESTENV / "bin"))}:{shlex.quote(str(NODEENV / "bin"))}:"$PATH"',
            "kubectl, helm, ctr",
        ),
        (f"cd {shlex.quote(str(REPO))}", "the chart's and the examples' paths start here"),
    ]
    tries = [
        ("kubectl get nodes -o wide", f"{NODE_NAME}, Ready, containerd"),
        ("make images", "build the operator and trainer images here and load them into this node"),
        ("make deploy", "the CRD, then `helm install` of the chart with the operator image"),
        (f"ctr --address {shlex.quote(str(node.socket))} -n k8s.io images ls", "the images in containerd"),
    ]
    width = max(len(command) for command, _ in setup + tries) + 2
    lines = "\n".join(f"  {command:<{width}}# {why}" for command, why in setup)
    more = "\n".join(f"  {command:<{width}}# {why}" for command, why in tries)
    return f"\nThe node is up. In another shell:\n\n{lines}\n\n{more}\n\nCtrl-C here stops everything.\n"


def _interrupt(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stopline_local.node",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C even where it started with SIGINT ignored (a shell's background job), which Python keeps
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def say(line: str) -> None:
        print(f"cluster: {line}", flush=True)

    node = Node()
    try:
        node.start(say)
        print(instructions(node), flush=True)
        while True:
            time.sleep(2)
            for name in list(node.processes):
                node._check_alive(name)
    except KeyboardInterrupt:
        print(flush=True)
        say("stopping every container and process it started")
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        node.stop()
        say("stopped: no process, mount, bridge or address left")


if __name__ == "__main__":
    sys.exit(main())
