"""The chart as helm and the real apiserver see it, and the operator running with only the chart's RBAC."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from operatorharness import (
    SINGLE_NAME,
    WAIT_S,
    checkpoint_message,
    exists,
    manifest,
    operator,
    phase_is,
    running_trainer,
    status,
    stop_recorded,
    terminate,
)
from stopline.api import parse_spec
from stopline.workload import Owner, build_job
from stopline_local.controlplane import REPO, ControlPlane, built_binary, wait_until

pytestmark = pytest.mark.cluster

CHART = REPO / "helm" / "stopline"
# OpenShift's restricted-v2 SCC assigns the uid and gid from the namespace's range
OPENSHIFT = ["--set", "podSecurityContext.runAsUser=null", "--set", "podSecurityContext.runAsGroup=null"]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(built_binary("helm")), *args], capture_output=True, text=True, timeout=60, check=check
    )


def test_chart_installs_the_crd_file_from_crds_unchanged() -> None:
    rendered = list(yaml.safe_load_all(helm("template", "stopline", str(CHART), "--include-crds").stdout))
    crds = [doc for doc in rendered if doc and doc["kind"] == "CustomResourceDefinition"]
    assert crds == [yaml.safe_load((REPO / "crds" / "trainingjob.yaml").read_text())]


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="defaults"),
        pytest.param(
            ["--set", "watchNamespaces={team-a,team-b}", "--set", "serviceMonitor.enabled=false"],
            id="namespaced",
        ),
        pytest.param(["--set", "dashboard.enabled=false", "--set", "verbose=true"], id="no-dashboard"),
        pytest.param(["--set", "replicaCount=2"], id="two-replicas"),  # PodDisruptionBudget, spreading
        pytest.param(OPENSHIFT, id="openshift"),
    ],
)
def test_helm_template_is_accepted_by_the_apiserver(control_plane: ControlPlane, values: list[str]) -> None:
    for team in ("team-a", "team-b"):  # a namespaced install puts Roles there; they must exist
        control_plane.kubectl("create", "namespace", team, check=False)
    manifests = helm(
        "template", "stopline", str(CHART), "--include-crds", "--namespace", "default", *values
    ).stdout
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifests)
    assert "customresourcedefinition.apiextensions.k8s.io/trainingjobs.stopline.dev" in result.stdout
    assert "deployment.apps/stopline" in result.stdout


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("rbac.creat=true", "rbac: Additional property creat is not allowed"),
        ("imagePullPolicy=Always", "Additional property imagePullPolicy is not allowed"),
        ("replicaCount=2,leaderElection.enabled=false", "replicaCount"),
        ("podDisruptionBudget.maxUnavailable=0", "podDisruptionBudget.maxUnavailable"),
        ("prometheusRule.selector={job=x}", "prometheusRule.selector"),
        ("securityContext=restricted", "securityContext: Invalid type"),
    ],
)
def test_the_values_schema_rejects_a_misspelt_or_unsafe_value_naming_it(setting: str, complaint: str) -> None:
    result = helm("template", "stopline", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


@pytest.mark.parametrize(
    ("values", "limit"),
    [
        pytest.param([], 1000, id="default"),
        pytest.param(["--set-json", "podMonitor.sampleLimit=20000000"], 20000000, id="large"),
        pytest.param(["--set", "podMonitor.sampleLimit=0"], None, id="none"),
    ],
)
def test_the_pod_monitor_limits_the_samples_of_one_trainer_scrape(
    values: list[str], limit: int | None
) -> None:
    """One trainer exporting 30k series must not reach the Prometheus that every tenant's criteria query."""
    only = ["--show-only", "templates/podmonitor.yaml", "--set", "podMonitor.enabled=true"]
    (pod_monitor,) = yaml.safe_load_all(helm("template", "stopline", str(CHART), *only, *values).stdout)
    assert pod_monitor["spec"].get("sampleLimit") == limit


def notes(plane: ControlPlane, *values: str) -> str:
    """What `helm install` prints after installing (helm template leaves NOTES.txt out)."""
    install = ["install", "stopline", str(CHART), "-n", "default", "--dry-run=server", "--skip-crds"]
    out = helm(f"--kubeconfig={plane.kubeconfig}", *install, *values).stdout
    return out[out.index("NOTES:") :]


def deployment_and_budget(*values: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Deployment and the PodDisruptionBudgets (none or one) the chart renders with these values."""
    docs = [
        doc for doc in yaml.safe_load_all(helm("template", "stopline", str(CHART), *values).stdout) if doc
    ]
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    return deployment, [doc for doc in docs if doc["kind"] == "PodDisruptionBudget"]


RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


def test_the_security_contexts_stay_restricted_by_default_and_each_key_can_be_overridden() -> None:
    deployment, _ = deployment_and_budget()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == RESTRICTED_POD
    assert pod["containers"][0]["securityContext"] == RESTRICTED_CONTAINER
    deployment, _ = deployment_and_budget(
        *OPENSHIFT,
        *sets("securityContext.readOnlyRootFilesystem=false", "podSecurityContext.fsGroup=2000"),
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        "fsGroup": 2000,
    }
    assert pod["containers"][0]["securityContext"] == {
        **RESTRICTED_CONTAINER,
        "readOnlyRootFilesystem": False,
    }


def test_several_replicas_get_a_disruption_budget_and_spread_over_nodes_and_zones() -> None:
    deployment, budgets = deployment_and_budget()
    assert budgets == []
    assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]
    deployment, (budget,) = deployment_and_budget("--set", "replicaCount=2")
    selector = deployment["spec"]["selector"]
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": selector,
    }
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [(each["topologyKey"], each["whenUnsatisfiable"]) for each in spread] == [
        ("kubernetes.io/hostname", "ScheduleAnyway"),  # a one-node cluster still runs both
        ("topology.kubernetes.io/zone", "ScheduleAnyway"),
    ]
    assert all(each["labelSelector"] == selector for each in spread)
    assert all(each["matchLabelKeys"] == ["pod-template-hash"] for each in spread)
    own = [{"maxSkew": 1, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule"}]
    deployment, budgets = deployment_and_budget(
        "--set",
        "replicaCount=3",
        "--set",
        "podDisruptionBudget.enabled=false",
        "--set-json",
        f"topologySpreadConstraints={json.dumps(own)}",
    )
    assert budgets == []
    assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"] == [
        {**own[0], "labelSelector": selector}
    ]


def test_the_notes_work_from_an_installed_chart_their_training_job_is_valid(
    crd_installed: ControlPlane,
) -> None:
    """No path of a checkout (examples/, crds/): what the notes say to paste is accepted as it is."""
    for values in ([], ["--set", "watchNamespaces={team-a}"]):
        printed = notes(crd_installed, *values)
        assert "examples/" not in printed
        assert "-f crds/" not in printed
        command, rest = printed.split("<<'EOF'\n", 1)
        training_job, _ = rest.split("\nEOF\n", 1)
        assert command.splitlines()[-1] == "kubectl apply" + (" -n team-a" if values else "") + " -f - "
        result = crd_installed.kubectl(
            "apply", "--dry-run=server", "-n", "default", "-f", "-", input=training_job, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "trainingjob.stopline.dev/resnet-lr3e-4 created (server dry run)" in result.stdout
        assert "helm show crds CHART --version VERSION | kubectl apply --server-side -f -" in printed
    assert "prometheusRule.enabled=true" in notes(crd_installed)


def test_a_cluster_wide_install_warns_that_each_of_its_rights_holds_in_every_namespace(
    control_plane: ControlPlane,
) -> None:
    """The default stays cluster-wide (one team, a first try, the node tier's install), so the install
    itself says what that grants, from the rules the ClusterRole is made of, and how to narrow it."""
    printed = notes(control_plane)
    assert "WARNING: cluster-wide rights" in printed
    assert "in EVERY namespace, kube-system included" in printed
    for rule in yaml.safe_load((CHART / "files" / "operator-rules.yaml").read_text()):
        group = f" ({rule['apiGroups'][0]})" if rule["apiGroups"][0] else ""
        assert f"  {', '.join(rule['resources'])}{group}: {', '.join(rule['verbs'])}\n" in printed
    assert "--set 'watchNamespaces={team-a,team-b}'" in printed
    assert "WARNING" not in notes(control_plane, "--set", "watchNamespaces={team-a}")


def as_service_account(
    plane: ControlPlane, namespace: str, release: str, values: list[str], folder: Path
) -> Path:
    """Install the chart's ServiceAccount and RBAC, as `helm install` would, and return a kubeconfig that
    authenticates with that ServiceAccount's token: the operator then has exactly the chart's rights."""
    only = ["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"]
    rendered = helm("template", release, str(CHART), "--namespace", namespace, *only, *values).stdout
    plane.kubectl("apply", "-f", "-", input=rendered)
    token = plane.kubectl("create", "token", f"{release}-stopline", "-n", namespace).stdout.strip()
    return plane.write_kubeconfig(folder / "operator-kubeconfig", token)


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_the_operator_with_only_the_charts_rbac_stops_a_job_and_can_do_nothing_else(
    crd_installed: ControlPlane,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scope: str,
) -> None:
    plane, release = crd_installed, namespace  # a release per test: its ClusterRole name is unique
    values = ["--set", f"watchNamespaces={{{namespace}}}"] if scope == "namespaced" else []
    kubeconfig = as_service_account(plane, namespace, release, values, tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    try:
        training_job = manifest(criteria=[], metrics={"interval": "1s"})
        with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
            trainer.report(1, 100, val_loss=1.0)
            plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
            wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
            stop_recorded(plane, namespace)
            terminate(plane, namespace, pod, checkpoint_message(1, 100, "/ckpt/step-000100.pt"))
            wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
        assert status(plane, namespace, SINGLE_NAME)["checkpoint"]["uri"] == "/ckpt/step-000100.pt"

        def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
            return plane.kubectl(f"--kubeconfig={kubeconfig}", *args, "-n", namespace, check=False)

        forbidden = [
            # never the TrainingJob's spec or annotations: GitOps tools would see drift
            as_operator("annotate", "tj", SINGLE_NAME, "touched=yes"),
            as_operator("get", "secrets"),  # a token Secret is read by name, never listed
            as_operator("delete", "secret", f"{SINGLE_NAME}-stopline-control"),  # jobs: a queue's only
            as_operator("create", "configmap", "x"),
        ]
        for refused in forbidden:
            assert refused.returncode != 0
            assert "forbidden" in refused.stderr.lower(), refused.stderr
        assert as_operator("get", "tj", SINGLE_NAME).returncode == 0  # the check is about rights, not access
    finally:
        if scope == "cluster":
            for kind in ("clusterrolebinding", "clusterrole"):
                plane.kubectl("delete", kind, f"{release}-stopline", "--ignore-not-found", check=False)


def rendered(release: str, namespace: str, *values: str, only: tuple[str, ...] = ()) -> str:
    """The chart as `helm install -n namespace` would apply it (CRDs aside), with only those templates."""
    show = [arg for template in only for arg in ("--show-only", f"templates/{template}")]
    return helm("template", release, str(CHART), "--namespace", namespace, *show, *values).stdout


def delete_cluster_scoped(plane: ControlPlane, manifests: str) -> None:
    """What a test applied outside its namespace: ClusterRoles, admission policies and their bindings."""
    for doc in yaml.safe_load_all(manifests):
        if doc and "namespace" not in doc["metadata"]:
            kind, name = doc["kind"].lower(), doc["metadata"]["name"]
            plane.kubectl("delete", kind, name, "--ignore-not-found", check=False)


def sets(*assignments: str) -> list[str]:
    return [arg for assignment in assignments for arg in ("--set", assignment)]


# object store blocks as a public S3 endpoint needs them; each holds a cloud metadata address
PUBLIC = [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0", "except": ["fc00::/7"]}}]


@pytest.mark.parametrize(
    ("values", "kinds"),
    [
        pytest.param([], {"ClusterRole/stopline-edit", "ClusterRole/stopline-view"}, id="user-roles"),
        pytest.param(
            sets("networkPolicy.enabled=true", "watchNamespaces={team-a,team-b}"),
            {"NetworkPolicy/team-a/stopline-trainers", "NetworkPolicy/team-b/stopline-trainers"},
            id="network-policy-namespaced",
        ),
        pytest.param(
            [
                *sets(
                    "networkPolicy.enabled=true",
                    "networkPolicy.namespaces={team-a}",
                    "networkPolicy.prometheus.enabled=false",
                ),
                *("--set-json", 'networkPolicy.additionalIngress=[{"ports":[{"port":6006}]}]'),
            ],
            {"NetworkPolicy/team-a/stopline-trainers", "NetworkPolicy/default/stopline-operator"},
            id="network-policy-cluster-wide",
        ),
        pytest.param(
            [
                *sets(
                    "operatorNetworkPolicy.enabled=true",
                    "operatorNetworkPolicy.apiServer.cidrs={10.0.0.1/32,fd00::1/128}",
                    "operatorNetworkPolicy.objectStore.ports={443,9000}",
                ),
                *("--set-json", f"operatorNetworkPolicy.objectStore.to={json.dumps(PUBLIC)}"),
                *(
                    "--set-json",
                    'operatorNetworkPolicy.additionalEgress=[{"ports":[{"port":123,"protocol":"UDP"}]}]',
                ),
            ],
            {"NetworkPolicy/default/stopline-operator-egress"},
            id="operator-egress-cluster-wide",
        ),
        pytest.param(
            [
                *sets(
                    "operatorNetworkPolicy.enabled=true",
                    "operatorNetworkPolicy.apiServer.cidrs={10.0.0.1/32}",
                    "watchNamespaces={team-a,team-b}",
                ),
                *("--set-json", "operatorNetworkPolicy.dns=[]"),
                *("--set-json", "operatorNetworkPolicy.prometheus.to=[]"),
            ],
            {"NetworkPolicy/default/stopline-operator-egress"},
            id="operator-egress-namespaced",
        ),
        pytest.param(
            sets("admissionPolicy.enabled=true"),
            {
                "ValidatingAdmissionPolicy/stopline-trainingjob-template",
                "ValidatingAdmissionPolicyBinding/stopline-trainingjob-template",
            },
            id="admission-policy",
        ),
        pytest.param(
            sets(
                "admissionPolicy.enabled=true",
                "admissionPolicy.validationActions={Warn,Audit}",
                "admissionPolicy.allowServiceAccountToken=true",
                "admissionPolicy.allowedServiceAccounts={default,trainer}",
                "admissionPolicy.allowedCapabilities={NET_BIND_SERVICE,IPC_LOCK}",
            ),
            {"ValidatingAdmissionPolicy/stopline-trainingjob-template"},
            id="admission-policy-warn",
        ),
        pytest.param(
            [*sets("admissionPolicy.enabled=true"), "--set-json", "admissionPolicy.allowedCapabilities=[]"],
            {"ValidatingAdmissionPolicy/stopline-trainingjob-template"},
            id="admission-policy-no-capabilities",
        ),
    ],
)
def test_each_security_option_renders_and_the_apiserver_accepts_it(
    control_plane: ControlPlane, values: list[str], kinds: set[str]
) -> None:
    for team in ("team-a", "team-b"):
        control_plane.kubectl("create", "namespace", team, check=False)
    manifests = rendered("stopline", "default", *values)
    found = {
        "/".join([doc["kind"], *([doc["metadata"]["namespace"]] if "namespace" in doc["metadata"] else [])])
        + "/"
        + doc["metadata"]["name"]
        for doc in yaml.safe_load_all(manifests)
        if doc
    }
    assert kinds <= found
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifests)
    assert "deployment.apps/stopline" in result.stdout


def test_the_operator_egress_policy_cuts_cloud_metadata_out_of_every_listed_block() -> None:
    values = [
        *sets(
            "operatorNetworkPolicy.enabled=true",
            "operatorNetworkPolicy.apiServer.cidrs={10.0.0.1/32}",
        ),
        *("--set-json", f"operatorNetworkPolicy.objectStore.to={json.dumps(PUBLIC)}"),
        *("--set-json", 'operatorNetworkPolicy.prometheus.to=[{"ipBlock":{"cidr":"10.0.0.0/8"}}]'),
    ]
    (policy,) = yaml.safe_load_all(
        rendered("stopline", "default", *values, only=("operator-networkpolicy.yaml",))
    )
    blocks = {
        peer["ipBlock"]["cidr"]: peer["ipBlock"].get("except")
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
    }
    assert blocks == {
        "10.0.0.1/32": None,
        "0.0.0.0/0": ["169.254.0.0/16"],
        "::/0": ["fc00::/7", "fe80::/10", "fd00:ec2::254/128"],
        "10.0.0.0/8": None,
    }


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        pytest.param(
            sets("operatorNetworkPolicy.enabled=true"),
            "needs the apiserver's addresses: set operatorNetworkPolicy.apiServer.cidrs",
            id="no-apiserver",
        ),
        pytest.param(
            [
                *sets(
                    "operatorNetworkPolicy.enabled=true",
                    "operatorNetworkPolicy.apiServer.cidrs={10.0.0.1/32}",
                ),
                *(
                    "--set-json",
                    'operatorNetworkPolicy.prometheus.to=[{"ipBlock":{"cidr":"169.254.169.254/32"}}]',
                ),
            ],
            "operatorNetworkPolicy.prometheus.to: 169.254.169.254/32 lies in 169.254.0.0/16 (link-local",
            id="metadata",
        ),
        pytest.param(
            [
                *sets(
                    "operatorNetworkPolicy.enabled=true",
                    "operatorNetworkPolicy.apiServer.cidrs={10.0.0.1/32}",
                ),
                *("--set-json", "operatorNetworkPolicy.objectStore.ports=[]"),
            ],
            "operatorNetworkPolicy.objectStore.ports: Array must have at least 1 items",
            id="no-ports",
        ),
    ],
)
def test_the_operator_egress_policy_refuses_to_render_without_what_it_needs_saying_what_to_set(
    values: list[str], complaint: str
) -> None:
    result = helm("template", "stopline", str(CHART), *values, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_a_network_policy_without_namespaces_refuses_to_render_saying_what_to_set() -> None:
    result = helm("template", "stopline", str(CHART), "--set", "networkPolicy.enabled=true", check=False)
    assert result.returncode != 0
    assert "set watchNamespaces or networkPolicy.namespaces" in result.stderr


def selector_text(selector: dict[str, Any]) -> str:
    """A NetworkPolicy LabelSelector as kubectl's -l, so the apiserver itself says what it selects."""
    terms = [f"{key}={value}" for key, value in selector.get("matchLabels", {}).items()]
    for expression in selector.get("matchExpressions", []):
        key, operator_ = expression["key"], expression["operator"]
        values = ",".join(expression.get("values", []))
        terms.append(
            {
                "Exists": key,
                "DoesNotExist": f"!{key}",
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
            }[operator_]
        )
    return ",".join(terms)


class Pods:
    """The pods of a namespace as the apiserver selects them by a NetworkPolicy's selectors."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane, self.namespace = plane, namespace

    def named(self, selector: dict[str, Any]) -> set[str]:
        out = self.plane.kubectl(
            "get", "pods", "-n", self.namespace, "-l", selector_text(selector), "-o", "json"
        )
        return {pod["metadata"]["name"] for pod in json.loads(out.stdout)["items"]}

    def operator(self) -> set[str]:
        return self.named({"matchLabels": {"app.kubernetes.io/instance": self.namespace}})

    def trainers(self) -> set[str]:
        return self.named({"matchLabels": {"job-name": "ranks"}})

    def namespaces(self, selector: dict[str, Any]) -> list[str]:
        out = self.plane.kubectl("get", "ns", "-l", selector_text(selector), "-o", "name")
        return out.stdout.split()

    def policy(self, name: str) -> dict[str, Any]:
        out = self.plane.kubectl("get", "networkpolicy", name, "-n", self.namespace, "-o", "json")
        return dict(json.loads(out.stdout)["spec"])

    def port_numbers(self, name: str) -> set[int]:
        """The port `name` of each trainer pod, as a NetworkPolicy's named port finds it."""
        numbers = set()
        for pod in self.trainers():
            spec = json.loads(
                self.plane.kubectl("get", "pod", pod, "-n", self.namespace, "-o", "json").stdout
            )
            ports = [port for c in spec["spec"]["containers"] for port in c.get("ports", [])]
            numbers |= {port["containerPort"] for port in ports if port.get("name") == name}
        return numbers


@contextmanager
def chart_and_two_ranks(plane: ControlPlane, namespace: str, *values: str) -> Iterator[Pods]:
    """The chart installed as release `namespace` in `namespace`, and the Job that the operator builds for a
    two-rank TrainingJob (metrics port 8123), run by the Job controller; yields their pods once they exist."""
    manifests = rendered(namespace, namespace, *values)
    try:
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=manifests)
        two_ranks = manifest(name="ranks", replicas=2, metrics={"port": 8123})
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(two_ranks))
        created = json.loads(plane.kubectl("get", "tj", "ranks", "-n", namespace, "-o", "json").stdout)
        owner = Owner(name="ranks", namespace=namespace, uid=created["metadata"]["uid"])
        job = build_job(owner, parse_spec(created["spec"]))
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
        pods = Pods(plane, namespace)
        wait_until(pods.operator, 60, "the Deployment's operator pod")
        wait_until(lambda: len(pods.trainers()) == 2, 60, "two trainer pods")
        yield pods
    finally:
        delete_cluster_scoped(plane, manifests)


def test_the_trainer_network_policy_admits_the_charts_operator_pod_and_rank_peers_to_the_built_pods(
    crd_installed: ControlPlane, namespace: str
) -> None:
    """The policy names pods and ports by label and port name: the real operator pod (from the chart's
    Deployment) and the real trainer pods (the operator's Job, run by the Job controller) must carry them."""
    values = sets("networkPolicy.enabled=true", f"watchNamespaces={{{namespace}}}")
    with chart_and_two_ranks(crd_installed, namespace, *values) as pods:
        policy = pods.policy(f"{namespace}-stopline-trainers")
        assert pods.named(policy["podSelector"]) == pods.trainers()
        from_operator, from_peers = policy["ingress"][0], policy["ingress"][1]
        (operator_peer,) = from_operator["from"]
        assert pods.named(operator_peer["podSelector"]) == pods.operator()
        assert pods.namespaces(operator_peer["namespaceSelector"]) == [f"namespace/{namespace}"]
        # the port the operator scrapes and stops, found by the name the policy uses
        assert from_operator["ports"] == [{"port": "stopline", "protocol": "TCP"}]
        assert pods.port_numbers("stopline") == {8123}
        (peer,) = from_peers["from"]
        assert pods.named(peer["podSelector"]) == pods.trainers()
        assert "ports" not in from_peers  # rendezvous, NCCL and gloo: any port


def test_the_operator_egress_policy_lets_the_charts_operator_pod_reach_the_built_trainer_pods_and_no_more(
    crd_installed: ControlPlane, namespace: str
) -> None:
    values = sets(
        "operatorNetworkPolicy.enabled=true",
        "operatorNetworkPolicy.apiServer.cidrs={10.0.0.1/32}",
        f"watchNamespaces={{{namespace}}}",
    )
    with chart_and_two_ranks(crd_installed, namespace, *values) as pods:
        policy = pods.policy(f"{namespace}-stopline-operator-egress")
        assert policy["policyTypes"] == ["Egress"]
        assert pods.named(policy["podSelector"]) == pods.operator()
        # a rule without `to` would allow every destination: objectStore.to is [] by default
        assert all(rule.get("to") for rule in policy["egress"])
        (to_trainers,) = [rule for rule in policy["egress"] if rule["ports"][0]["port"] == "stopline"]
        (trainers,) = to_trainers["to"]
        assert pods.named(trainers["podSelector"]) == pods.trainers()
        assert pods.namespaces(trainers["namespaceSelector"]) == [f"namespace/{namespace}"]
        assert to_trainers["ports"] == [{"port": "stopline", "protocol": "TCP"}]
        assert pods.port_numbers("stopline") == {8123}


def test_namespace_editors_may_create_training_jobs_and_viewers_may_only_read_them(
    crd_installed: ControlPlane, namespace: str
) -> None:
    plane, release = crd_installed, namespace  # a release per test: its ClusterRole names are unique
    roles = rendered(release, namespace, only=("user-roles.yaml",))
    editor, viewer = f"editor-{namespace}", f"viewer-{namespace}"
    try:
        plane.kubectl("apply", "-f", "-", input=roles)
        plane.kubectl(
            "create", "rolebinding", "editors", "--clusterrole=edit", f"--user={editor}", "-n", namespace
        )
        plane.kubectl(
            "create", "rolebinding", "viewers", "--clusterrole=view", f"--user={viewer}", "-n", namespace
        )

        def may(user: str, verb: str) -> bool:
            asked = plane.kubectl(
                "auth",
                "can-i",
                verb,
                "trainingjobs.stopline.dev",
                f"--as={user}",
                "-n",
                namespace,
                check=False,
            )
            return asked.stdout.strip() == "yes"

        # the controller manager's clusterrole-aggregation controller copies the rules into edit and view
        wait_until(lambda: may(editor, "create") and may(viewer, "get"), 30, "edit and view to aggregate")
        training_job = json.dumps(manifest())
        plane.kubectl("create", f"--as={editor}", "-n", namespace, "-f", "-", input=training_job)
        plane.kubectl(
            "annotate", "tj", SINGLE_NAME, f"--as={editor}", "-n", namespace, "stopline.dev/stop=enough"
        )

        def as_viewer(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
            return plane.kubectl(*args, f"--as={viewer}", "-n", namespace, input=input, check=False)

        assert as_viewer("get", "tj", SINGLE_NAME).returncode == 0
        for refused in (
            as_viewer("create", "-f", "-", input=training_job.replace(SINGLE_NAME, "another")),
            as_viewer("annotate", "tj", SINGLE_NAME, "stopline.dev/cancel=yes"),
            as_viewer("delete", "tj", SINGLE_NAME),
        ):
            assert refused.returncode != 0
            assert "forbidden" in refused.stderr.lower(), refused.stderr
    finally:
        delete_cluster_scoped(plane, roles)


@pytest.fixture(scope="module")
def guarded(crd_installed: ControlPlane) -> Iterator[str]:
    """A namespace under the chart's admission policy, bound to it alone: other tests' TrainingJobs are not
    judged. Yields once the apiserver enforces it (policies take effect through an informer)."""
    plane = crd_installed
    name = f"guarded-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", name)
    selector = json.dumps({"matchLabels": {"kubernetes.io/metadata.name": name}})
    values = [
        "--set",
        "admissionPolicy.enabled=true",
        "--set-json",
        f"admissionPolicy.namespaceSelector={selector}",
    ]
    policy = rendered(name, name, *values, only=("admissionpolicy.yaml",))
    probe = with_pod_spec("probe", serviceAccountName="not-allowed")
    try:
        plane.kubectl("apply", "-f", "-", input=policy)
        wait_until(
            lambda: "denied request" in create(plane, name, probe, "--dry-run=server").stderr,
            30,
            "the admission policy to be enforced",
        )
        yield name
    finally:
        delete_cluster_scoped(plane, policy)
        plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def create(
    plane: ControlPlane, namespace: str, training_job: dict[str, Any], *flags: str
) -> subprocess.CompletedProcess[str]:
    return plane.kubectl(
        "create", "-n", namespace, *flags, "-f", "-", input=json.dumps(training_job), check=False
    )


def with_pod_spec(name: str, **pod: Any) -> dict[str, Any]:
    """The example TrainingJob with its template's pod spec changed; `automountServiceAccountToken: false`
    unless given, as the admission policy asks by default."""
    training_job = manifest(name=name)
    training_job["spec"]["template"]["spec"].update({"automountServiceAccountToken": False, **pod})
    return training_job


def trainer(**security_context: Any) -> dict[str, Any]:
    """The example's trainer container, with these securityContext fields."""
    (container,) = manifest()["spec"]["template"]["spec"]["containers"]
    return {**container, "securityContext": security_context} if security_context else container


def test_the_admission_policy_refuses_host_network_naming_the_field_and_admits_a_plain_job(
    crd_installed: ControlPlane, guarded: str
) -> None:
    plane = crd_installed
    refused = create(plane, guarded, with_pod_spec("host", hostNetwork=True))
    assert refused.returncode != 0
    assert "spec.template.spec.hostNetwork: a trainer may not use the node's network" in refused.stderr
    assert "remove hostNetwork" in refused.stderr
    assert not exists(plane, guarded, "tj", "host")

    plain = create(plane, guarded, with_pod_spec("plain", serviceAccountName="default"))
    assert plain.returncode == 0, plain.stderr
    # only creation is judged: a stop annotation is an update, and always goes through
    plane.kubectl("annotate", "tj", "plain", "-n", guarded, "stopline.dev/stop=enough")


@pytest.mark.parametrize(
    ("pod", "complaint"),
    [
        pytest.param({"hostNetwork": "yes"}, "spec.template.spec.hostNetwork", id="hostNetwork-not-a-bool"),
        pytest.param({"hostPID": True}, "spec.template.spec.hostPID", id="hostPID"),
        pytest.param({"hostIPC": True}, "spec.template.spec.hostIPC", id="hostIPC"),
        pytest.param(
            {
                "initContainers": [
                    {"name": "setup", "image": "busybox", "securityContext": {"privileged": True}}
                ]
            },
            "securityContext.privileged: a trainer container may not be privileged",
            id="privileged-init-container",
        ),
        pytest.param(
            {"volumes": [{"name": "node", "hostPath": {"path": "/"}}]},
            "spec.template.spec.volumes[].hostPath",
            id="hostPath",
        ),
        pytest.param(
            {"serviceAccountName": "deployer"},
            "spec.template.spec.serviceAccountName: deployer is not allowed",
            id="serviceAccountName",
        ),
        pytest.param(
            {"serviceAccount": "deployer"},  # the deprecated spelling, which the apiserver still honours
            "spec.template.spec.serviceAccountName: deployer is not allowed",
            id="deprecated-serviceAccount",
        ),
        pytest.param(
            {"automountServiceAccountToken": True},
            "spec.template.spec.automountServiceAccountToken: set it to false",
            id="token",
        ),
        pytest.param(
            {
                "volumes": [
                    {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
                ]
            },
            "spec.template.spec.volumes[].projected.sources[].serviceAccountToken: remove it",
            id="projected-token",
        ),
        pytest.param(
            {"containers": [trainer(capabilities={"add": ["CHOWN", "SYS_ADMIN"]})]},
            "securityContext.capabilities.add: a trainer container may add only AUDIT_WRITE",
            id="capabilities-add",
        ),
        pytest.param(
            {"containers": [{**trainer(), "ports": [{"containerPort": 8000, "hostPort": 8000}]}]},
            "spec.template.spec.containers[].ports[].hostPort: a trainer may not take a port of the node",
            id="hostPort",
        ),
        pytest.param(
            {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
            "seccompProfile.type: a trainer may not run without a seccomp profile; set RuntimeDefault",
            id="seccomp-pod",
        ),
        pytest.param(
            {"containers": [trainer(seccompProfile={"type": "Unconfined"})]},
            "seccompProfile.type: a trainer may not run without a seccomp profile",
            id="seccomp-container",
        ),
        pytest.param(
            {"containers": [trainer(appArmorProfile={"type": "Unconfined"})]},
            "appArmorProfile.type: a trainer may not run without an AppArmor profile; set RuntimeDefault",
            id="apparmor",
        ),
        pytest.param(
            {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
            "seLinuxOptions: a trainer may not choose its SELinux user or role, nor a type",
            id="selinux",
        ),
        pytest.param(
            {"containers": [trainer(procMount="Unmasked")]},
            "spec.template.spec.containers[].securityContext.procMount: a trainer's /proc stays masked",
            id="procMount",
        ),
    ],
)
def test_the_admission_policy_refuses_each_unsafe_template_naming_the_field(
    crd_installed: ControlPlane, guarded: str, pod: dict[str, Any], complaint: str
) -> None:
    refused = create(crd_installed, guarded, with_pod_spec("unsafe", **pod), "--dry-run=server")
    assert refused.returncode != 0
    assert complaint in refused.stderr


def test_the_admission_policy_refuses_an_unconfined_apparmor_annotation_naming_it(
    crd_installed: ControlPlane, guarded: str
) -> None:
    unconfined = with_pod_spec("unconfined")
    annotation = "container.apparmor.security.beta.kubernetes.io/trainer"
    unconfined["spec"]["template"].setdefault("metadata", {})["annotations"] = {annotation: "unconfined"}
    refused = create(crd_installed, guarded, unconfined, "--dry-run=server")
    assert refused.returncode != 0
    field = "spec.template.metadata.annotations[container.apparmor.security.beta.kubernetes.io/*]"
    assert f"{field}: a trainer may not run unconfined" in refused.stderr


def test_the_admission_policy_admits_what_pod_security_baseline_admits(
    crd_installed: ControlPlane, guarded: str
) -> None:
    """The baseline rules refuse only the unsafe values: the safe ones of the same fields go through."""
    container = trainer(
        capabilities={"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        seccompProfile={"type": "RuntimeDefault"},
        appArmorProfile={"type": "RuntimeDefault"},
        seLinuxOptions={"type": "container_t", "level": "s0:c1,c2"},
        procMount="Default",
    )
    baseline = with_pod_spec(
        "baseline",
        containers=[{**container, "ports": [{"containerPort": 9000, "hostPort": 0}]}],
        securityContext={"seccompProfile": {"type": "Localhost", "localhostProfile": "trainer.json"}},
        volumes=[{"name": "config", "projected": {"sources": [{"configMap": {"name": "settings"}}]}}],
    )
    baseline["spec"]["template"]["metadata"] = {
        "annotations": {"container.apparmor.security.beta.kubernetes.io/trainer": "runtime/default"}
    }
    admitted = create(crd_installed, guarded, baseline, "--dry-run=server")
    assert admitted.returncode == 0, admitted.stderr
