"""Static checks of deploy/: Dockerfile, compose, Kubernetes (kustomize), systemd.

No docker engine or cluster is needed; when `kubectl` is on PATH the overlays are also
rendered with `kubectl kustomize`.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
TOKEN_SECRET = "volley-token"
TOKEN_KEY = "volley_token"
TOKEN_PATH = "/run/secrets/volley_token"
AGENT_DNS = "dns:///volley-agents.$(POD_NAMESPACE).svc.cluster.local:7070"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}


# --------------------------------------------------------------------------- helpers


def load_all(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for d in docs:
        assert isinstance(d, dict), f"{path}: every document must be a mapping"
    return docs


def base_docs() -> list[tuple[Path, dict[str, Any]]]:
    kust = load_all(BASE / "kustomization.yaml")[0]
    out = []
    for res in kust["resources"]:
        for doc in load_all(BASE / res):
            out.append((BASE / res, doc))
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in base_docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"{kind}/{name} not in deploy/k8s/base")


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def containers(doc: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    out: list[dict[str, Any]] = list(spec["containers"])
    if init:
        out += spec.get("initContainers", [])
    return out


def workloads() -> Iterator[dict[str, Any]]:
    for _, doc in base_docs():
        if doc["kind"] in WORKLOAD_KINDS:
            yield doc


def secret_mounted(doc: dict[str, Any], container: dict[str, Any]) -> bool:
    vols = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
    for m in container.get("volumeMounts", []):
        vol = vols.get(m["name"], {})
        sec = vol.get("secret")
        if sec and sec["secretName"] == TOKEN_SECRET:
            items = sec.get("items") or [{"key": TOKEN_KEY, "path": TOKEN_KEY}]
            paths = {f"{m['mountPath'].rstrip('/')}/{i['path']}" for i in items}
            if TOKEN_PATH in paths and any(i["key"] == TOKEN_KEY for i in items):
                return True
    return False


def arg_after(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    buf = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        op, _, rest = buf.partition(" ")
        lines.append((op.upper(), rest.strip()))
        buf = ""
    return lines


def compose() -> dict[str, Any]:
    return load_all(DEPLOY / "compose.yaml")[0]


# --------------------------------------------------------------------------- all YAML


def test_every_yaml_file_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    for f in files:
        assert load_all(f), f"{f} is empty"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile() -> None:
    ins = dockerfile_instructions()
    ops = [op for op, _ in ins]
    args = dict(rest.split("=", 1) for op, rest in ins if op == "ARG" and "=" in rest)
    froms = [rest.split()[0] for op, rest in ins if op == "FROM"]
    resolved = [args.get(f.strip("${}"), f) if f.startswith("$") else f for f in froms]
    assert resolved[-1] == "python:3.11-slim"
    users = [rest for op, rest in ins if op == "USER"]
    assert users, "Dockerfile needs a USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert users[-1] == "volley"
    assert any("useradd" in rest and "volley" in rest for op, rest in ins if op == "RUN")
    assert any("pip install" in rest for op, rest in ins if op == "RUN")
    (expose,) = [rest for op, rest in ins if op == "EXPOSE"]
    assert "7070" in expose.split()
    (health,) = [rest for op, rest in ins if op == "HEALTHCHECK"]
    assert "CMD" in health and "create_connection" in health and "7070" in health
    (entry,) = [rest for op, rest in ins if op == "ENTRYPOINT"]
    assert json.loads(entry) == ["volley"]
    (cmd,) = [rest for op, rest in ins if op == "CMD"]
    assert json.loads(cmd) == [
        "agent",
        "--listen",
        "0.0.0.0:7070",
        "--token-file",
        TOKEN_PATH,
    ]
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    # everything COPY'd from the build context exists
    for op, rest in ins:
        if op == "COPY" and not rest.startswith("--from"):
            for src in shlex.split(rest)[:-1]:
                if not src.startswith("--"):
                    assert (REPO / src).exists(), f"COPY source {src} missing"


def test_dockerignore_suggestion() -> None:
    lines = (DEPLOY / "dockerignore.txt").read_text().splitlines()
    entries = {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}
    assert {".git", "deploy/secrets/", "runs/"} <= entries
    for needed in ("pyproject.toml", "volley", "agent", "coordinator"):
        assert needed not in entries


# --------------------------------------------------------------------------- compose


def test_compose_services_images_and_profiles() -> None:
    svcs = compose()["services"]
    for name, svc in svcs.items():
        assert svc.get("image"), f"compose service {name} has no image"
    triton = {n: s for n, s in svcs.items() if s["image"].startswith("nvcr.io/nvidia/triton")}
    profiles = {p for s in triton.values() for p in s.get("profiles", [])}
    assert {"cpu", "gpu"} <= profiles
    for name, svc in triton.items():
        assert svc["image"] == TRITON_IMAGE
        assert "triton" in svc["networks"]["default"]["aliases"], name
        assert any("8001:8001" in p for p in svc["ports"])
        mounts = [v.split(":")[0] for v in svc["volumes"]]
        assert "../triton_models" in mounts
        assert (DEPLOY / "../triton_models").resolve().is_dir()
    assert svcs["coordinator"]["profiles"] == ["run"]


def test_compose_gpu_reservation() -> None:
    gpu = [s for s in compose()["services"].values() if "gpu" in s.get("profiles", [])]
    assert len(gpu) == 1
    devices = gpu[0]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    cpu = [s for s in compose()["services"].values() if "cpu" in s.get("profiles", [])]
    assert cpu and "deploy" not in cpu[0]


def test_compose_agents_coordinator_and_secrets() -> None:
    doc = compose()
    svcs = doc["services"]
    assert "file" in doc["secrets"]["volley_token"]
    agents = [n for n in svcs if n.startswith("agent-")]
    assert agents == ["agent-1", "agent-2"]
    for n in agents:
        cmd = svcs[n]["command"]
        assert cmd[0] == "agent"
        assert arg_after(cmd, "--listen") == ["0.0.0.0:7070"]
        assert arg_after(cmd, "--token-file") == [TOKEN_PATH]  # non-loopback needs a token
        assert "volley_token" in svcs[n]["secrets"]
        assert "ports" not in svcs[n], "agents must not be published on the host"
    coord = svcs["coordinator"]
    assert coord["command"] == [
        "run",
        "--target",
        "triton:8001",
        "--model",
        "add",
        "--rate",
        "500",
        "--duration",
        "30s",
        "--agent",
        "agent-1:7070",
        "--agent",
        "agent-2:7070",
        "--token-file",
        TOKEN_PATH,
        "--out",
        "/runs",
    ]
    assert "volley_token" in coord["secrets"]
    assert any(v.endswith(":/runs") for v in coord["volumes"])
    assert coord["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / coord["build"]["context"] / coord["build"]["dockerfile"]).is_file()


# --------------------------------------------------------------------------- kubernetes


def test_kustomizations_list_existing_files() -> None:
    kfiles = sorted(K8S.rglob("kustomization.yaml"))
    assert {p.parent.name for p in kfiles} == {"base", "cpu", "gpu"}
    base_names = {(d["kind"], d["metadata"]["name"]) for _, d in base_docs()}
    for kf in kfiles:
        k = load_all(kf)[0]
        assert k["kind"] == "Kustomization"
        for res in k.get("resources", []):
            target = (kf.parent / res).resolve()
            assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{kf}: {res}"
        for patch in k.get("patches", []):
            assert (kf.parent / patch["path"]).is_file(), f"{kf}: {patch['path']}"
            t = patch["target"]
            assert (t["kind"], t["name"]) in base_names
        # every YAML next to a kustomization is used by it
        used = {*k.get("resources", []), *(p["path"] for p in k.get("patches", []))}
        for f in kf.parent.glob("*.yaml"):
            assert f.name == "kustomization.yaml" or f.name in used, f"unused {f}"


def test_base_is_namespace_agnostic_and_has_no_secret_values() -> None:
    for path, doc in base_docs():
        assert "namespace" not in doc["metadata"], path
        assert doc["kind"] != "Secret", f"{path}: the token Secret is created by hand"


def test_images_ports_resources() -> None:
    for doc in workloads():
        for c in containers(doc):
            assert c.get("image"), f"{doc['metadata']['name']}/{c['name']} has no image"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{c['name']} {part}"
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            for c in containers(doc, init=False):
                assert c.get("ports"), f"{c['name']} declares no containerPort"
    triton = find("Deployment", "triton")
    (tc,) = containers(triton, init=False)
    assert tc["image"] == TRITON_IMAGE
    assert {p["containerPort"] for p in tc["ports"]} == {8000, 8001, 8002}
    assert tc["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "nvidia.com/gpu" not in tc["resources"]["limits"]  # base is CPU


def test_services_match_pods() -> None:
    for _, svc in base_docs():
        if svc["kind"] != "Service":
            continue
        pods = [
            d
            for d in workloads()
            if d["kind"] != "Job"
            and svc["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no pods"
        names = {p["name"] for c in containers(pods[0], init=False) for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names | {port["port"]}
    triton = find("Service", "triton")
    assert {p["port"] for p in triton["spec"]["ports"]} == {8000, 8001, 8002}


def test_agents_statefulset_headless_service_probes_affinity() -> None:
    sts = find("StatefulSet", "volley-agent")
    svc = find("Service", "volley-agents")
    assert svc["spec"]["clusterIP"] == "None"
    assert [p["port"] for p in svc["spec"]["ports"]] == [7070]
    assert sts["spec"]["serviceName"] == "volley-agents"
    assert sts["spec"]["replicas"] == 3
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (agent,) = containers(sts, init=False)
    assert agent["image"].split(":")[0] == "volley"
    assert agent["ports"][0]["containerPort"] == 7070
    for probe in ("readinessProbe", "livenessProbe"):
        assert agent[probe]["tcpSocket"]["port"] == 7070, probe
    args = agent["args"]
    assert args[0] == "agent"
    assert arg_after(args, "--listen") == ["0.0.0.0:7070"]
    assert arg_after(args, "--token-file") == [TOKEN_PATH]
    anti = pod_spec(sts)["affinity"]["podAntiAffinity"]
    terms = [
        *anti.get("requiredDuringSchedulingIgnoredDuringExecution", []),
        *(
            t["podAffinityTerm"]
            for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ),
    ]
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname"
        and t["labelSelector"]["matchLabels"].items() <= labels.items()
        for t in terms
    )
    sc = pod_spec(sts)["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0


def test_token_secret_wired_into_agents_and_coordinator() -> None:
    sts = find("StatefulSet", "volley-agent")
    job = find("Job", "volley-run")
    assert secret_mounted(sts, containers(sts, init=False)[0])
    assert secret_mounted(job, containers(job, init=False)[0])


def test_coordinator_job() -> None:
    job = find("Job", "volley-run")
    (c,) = containers(job, init=False)
    args = c["args"]
    assert args[0] == "run"
    assert arg_after(args, "--target") == ["triton:8001"]
    assert arg_after(args, "--agent") == [AGENT_DNS]
    assert arg_after(args, "--token-file") == [TOKEN_PATH]
    assert arg_after(args, "--out") == ["/runs"]
    assert ("--rate" in args) != ("--concurrency" in args)
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert job["spec"]["backoffLimit"] == 0
    assert pod_spec(job)["restartPolicy"] == "Never"
    # the init container waits for as many agents as the StatefulSet runs
    (wait,) = pod_spec(job)["initContainers"]
    wenv = {e["name"]: e for e in wait["env"]}
    assert (
        int(wenv["MIN_AGENTS"]["value"]) == find("StatefulSet", "volley-agent")["spec"]["replicas"]
    )


def test_volumes_and_claims_resolve() -> None:
    pvcs = {d["metadata"]["name"] for _, d in base_docs() if d["kind"] == "PersistentVolumeClaim"}
    for doc in workloads():
        vols = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
        for c in containers(doc):
            for m in c.get("volumeMounts", []):
                assert m["name"] in vols, f"{c['name']}: volume {m['name']} not declared"
        for v in vols.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs


def _overlay_patch(name: str) -> dict[str, Any]:
    k = load_all(K8S / "overlays" / name / "kustomization.yaml")[0]
    assert k["resources"] == ["../../base"]
    (patch,) = k["patches"]
    return load_all(K8S / "overlays" / name / patch["path"])[0]


def test_gpu_overlay_requests_gpu_and_gpu_instances() -> None:
    patch = _overlay_patch("gpu")
    spec = patch["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["name"] == "tritonserver"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    (init,) = spec["initContainers"]
    assert {e["name"]: e["value"] for e in init["env"]}["INSTANCE_KIND"] == "KIND_GPU"
    # names in the patch exist in the base, so the strategic merge hits them
    base = pod_spec(find("Deployment", "triton"))
    assert c["name"] in {x["name"] for x in base["containers"]}
    assert init["name"] in {x["name"] for x in base["initContainers"]}
    cpu = _overlay_patch("cpu")["spec"]["template"]["spec"]
    assert {e["name"]: e["value"] for e in cpu["initContainers"][0]["env"]}["INSTANCE_KIND"] == (
        "KIND_CPU"
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_render_with_kustomize(overlay: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    triton = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton"
    )
    (c,) = triton["spec"]["template"]["spec"]["containers"]
    limits = c["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")
    assert {"cpu", "memory"} <= set(limits)  # the merge kept the base limits
    images = {
        c["image"]
        for d in docs
        if d["kind"] in WORKLOAD_KINDS
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert "volley:0.1.0" in images


# --------------------------------------------------------------------------- systemd / docs


def test_systemd_unit() -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(DEPLOY / "systemd" / "volley-agent.service")
    svc = cp["Service"]
    assert svc["User"] not in {"root", "0"}
    exec_start = shlex.split(svc["ExecStart"])
    assert exec_start[0].endswith("/volley") and exec_start[1] == "agent"
    assert "--listen" in exec_start and "--token-file" in exec_start
    assert svc["LoadCredential"].startswith("volley_token:")
    assert svc["Restart"] == "on-failure"
    assert cp["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in cp["Unit"]["After"]


def test_readme_has_commands_for_every_target() -> None:
    text = (DEPLOY / "README.md").read_text()
    for needle in (
        "systemctl enable --now volley-agent",
        "docker compose -f deploy/compose.yaml --profile cpu up",
        "--profile gpu",
        "run --rm coordinator",
        "kubectl -n $NS apply -k deploy/k8s/overlays/cpu",
        "deploy/k8s/overlays/gpu",
        "kubectl -n $NS create secret generic volley-token",
        "$(POD_NAMESPACE)",
        "dockerignore",
    ):
        assert needle in text, needle


def test_image_entrypoint_runs_volley_help() -> None:
    """The image's ENTRYPOINT is the `volley` console script; run the same entry point
    (docker itself is not available here) and check --help for every command."""
    import re
    import subprocess
    import sys

    text = (DEPLOY / "Dockerfile").read_text()
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.M)
    assert entry and entry.group(1) == "volley"
    # the five processes start side by side (each is an interpreter importing volley)
    commands = ([], ["agent"], ["run"], ["triton"], ["report"])
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "volley", *args, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    for args, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, (args, err)
        assert "Usage" in out


def test_agents_by_dns_name_and_headless_service_name() -> None:
    from coordinator.agents import resolve_agents

    assert resolve_agents(["localhost:7070"]) == ["localhost:7070"]
    many = resolve_agents(["dns:///localhost:7070"])
    assert many and all(a.endswith(":7070") for a in many)
    assert "127.0.0.1:7070" in many
