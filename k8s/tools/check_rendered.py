#!/usr/bin/env python3
"""Checks on one rendered kustomization that neither kubernetes-validate nor checkov make.

1. Custom resources: splits the render into core kinds (for kubernetes-validate --strict, which
   has their schemas) and custom resources, each validated strictly against
   SCHEMAS/<group>-<version>.json (cert-manager.io-v1.json, monitoring.coreos.com-v1.json); a
   group with no schema there fails, so a new CRD cannot slip through unvalidated.
2. cert-manager: renewBefore < duration; every issuerRef resolves (an Issuer in the render, a
   ClusterIssuer in the render or in a --cluster-render, or one listed in --cluster-issuers,
   each of which must be used); a CA Issuer's Secret is issued by a Certificate beside it;
   --prod: no CA Certificate in the overlay (the internal CA lives in k8s/pki).
3. References: every Secret, ConfigMap and ServiceAccount a pod template uses is rendered, is a
   Certificate's Secret, or is listed in --operator-secrets, key by key; each listed one is used.
   A file setting is on a mounted volume (the URL files and the datastore CA in every pod, any
   CPIS_*_FILE in a serving one). --prod: every pod reaching a datastore (backend, migration)
   sets CPIS_REQUIRE_DATASTORE_TLS=true.
   A PodMonitor selects serving pods that have the port it scrapes.
4. Drain timing of every serving Deployment (component gateway or backend): a preStop sleep;
   terminationGracePeriodSeconds >= preStop + the container's CPIS_GRACE_PERIOD + margin;
   behind a LoadBalancer Service, preStop >= --lb-deregistration; behind a headless Service,
   preStop >= endpoint propagation + DNS TTL + the gateway's re-resolution interval
   (RESOLVE_EVERY, read from --resolve-source).
5. Egress: DNS only to the cluster DNS pods (kube-system, k8s-app=kube-dns) or a /32; a
   migration Job's pods reach only DNS, PostgreSQL and the collector; only flag-service's
   serving pods reach Redis (6379); --prod: every egress rule names a destination (no rule
   without `to`, no 0.0.0.0/0 or ::/0, no bare all-namespaces selector).
6. Connection budget: the sum over database-backed Deployments of (maxReplicas + maxSurge) x the
   pool size (read from --pool-source) plus one per migration Job fits PostgreSQL's
   max_connections less the reserves in --capacity's "Connections" table (--prod: that table's
   max_connections, and its rows must equal what the render gives; dev: the in-cluster
   PostgreSQL's `-c max_connections=`).
7. --prod with --capacity: every serving container's requests and limits and every HPA's
   min..max equal the table "Requests, limits and replicas" in docs/capacity.md.
8. Deploy phases: serving Deployments carry cpis/deploy-phase (backends, or gateway for the
   gateway), which deploy.sh applies in that order; nothing else carries it.

Usage: check_rendered.py RENDERED.yaml CORE_OUT.yaml --schemas DIR [options]; see --help.
"""
import argparse
import ipaddress
import json
import math
import os
import re
import sys

import jsonschema
import yaml

WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}
SERVING = {"gateway", "backend"}
PHASE = {"gateway": "gateway", "backend": "backends"}
PHASE_LABEL = "cpis/deploy-phase"
DEFAULT_GRACE_PERIOD = 20  # platform/src/config.rs, --grace-period
MIGRATION_PORTS = {53, 5432, 4317}
READ_AT_PARSE = {"CPIS_DATABASE_URL_FILE", "CPIS_REDIS_URL_FILE"}  # platform/src/config.rs
# Read at start by every command, `migrate` too (platform/src/runtime.rs)
READ_AT_START = {"CPIS_DATASTORE_CA_FILE"}
DATASTORE_COMPONENTS = {"backend", "migration"}

errors = []


def fail(msg):
    errors.append(msg)


def group_version(api_version):
    if "/" in api_version:
        return tuple(api_version.split("/", 1))
    return "", api_version


def is_core_group(group):
    # Built-in groups: the legacy "" group, un-dotted groups (apps, batch, policy, autoscaling)
    # and *.k8s.io.
    return group == "" or "." not in group or group.endswith(".k8s.io")


def go_duration_seconds(text):
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", text))


def quantity(text):
    """A Kubernetes quantity as a number (CPU in cores, memory in bytes)."""
    text = str(text)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not m or m.group(2) not in suffixes and m.group(2) != "":
        raise ValueError(f"not a quantity: {text!r}")
    return float(m.group(1)) * suffixes.get(m.group(2), 1)


def kn(doc):
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_template(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template")


def selects(selector, labels):
    """A LabelSelector (matchLabels/matchExpressions) or a plain map (a Service's selector)."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def load_listing(path):
    """NAME [FIELD] lines, '#' comments: {name: set(comma-split FIELD)}."""
    out = {}
    if not path:
        return out
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                parts = line.split()
                out[parts[0]] = set(parts[1].split(",")) if len(parts) > 1 else set()
    return out


def markdown_table(path, header):
    """The rows (lists of cells) of the first table in `path` whose header row is `header`."""
    with open(path) as f:
        lines = [line.strip() for line in f]
    want = [h.lower() for h in header]
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if [c.lower() for c in cells] != want:
            continue
        rows = []
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            rows.append([c.strip().strip("`").strip() for c in row.strip("|").split("|")])
        return rows
    return None


def source_number(path, pattern, what):
    with open(path) as f:
        m = re.search(pattern, f.read())
    if not m:
        fail(f"{path}: cannot find {what} (pattern {pattern!r}); update check_rendered.py")
        return None
    return int(m.group(1))


def effective_env(container, configmaps):
    """The container's environment as the kubelet builds it: envFrom in order, then env."""
    env = {}
    for ef in container.get("envFrom", []):
        if "configMapRef" in ef:
            env.update(configmaps.get(ef["configMapRef"]["name"], {}))
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif (e.get("valueFrom") or {}).get("configMapKeyRef"):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = configmaps.get(ref["name"], {}).get(ref["key"])
        else:
            env[e["name"]] = None
    return env


def max_surge(deployment, replicas):
    ru = ((deployment["spec"].get("strategy") or {}).get("rollingUpdate") or {})
    surge = ru.get("maxSurge", "25%")
    if isinstance(surge, str) and surge.endswith("%"):
        return math.ceil(replicas * int(surge[:-1]) / 100)
    return int(surge)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rendered")
    ap.add_argument("core_out")
    ap.add_argument("--schemas", required=True, help="directory of <group>-<version>.json")
    ap.add_argument("--operator-secrets", help="overlay's operator-secrets.txt")
    ap.add_argument("--cluster-issuers", help="overlay's cluster-issuers.txt (platform-provided)")
    ap.add_argument("--cluster-render", action="append", default=[],
                    help="another render applied before this one (k8s/pki): its ClusterIssuers exist")
    ap.add_argument("--prod", action="store_true", help="the production checks (egress, capacity, no CA)")
    ap.add_argument("--capacity", help="docs/capacity.md")
    ap.add_argument("--pool-source", help="platform/src/database.rs (the PostgreSQL pool size)")
    ap.add_argument("--resolve-source", help="gateway/src/backends.rs (RESOLVE_EVERY)")
    ap.add_argument("--lb-deregistration", type=int, default=30,
                    help="seconds a public load balancer takes to stop sending to a node")
    ap.add_argument("--endpoint-propagation", type=int, default=2,
                    help="seconds for an endpoint removal to reach kube-proxy and CoreDNS")
    ap.add_argument("--dns-ttl", type=int, default=5, help="CoreDNS TTL of a headless Service's records")
    ap.add_argument("--drain-margin", type=int, default=5,
                    help="seconds left after preStop + CPIS_GRACE_PERIOD before SIGKILL")
    args = ap.parse_args()

    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    cluster_docs = []
    for path in args.cluster_render:
        with open(path) as f:
            cluster_docs += [d for d in yaml.safe_load_all(f) if d]

    # --- 1. custom resources --------------------------------------------------------------------
    core, crs = [], []
    validators = {}
    for d in docs:
        group, version = group_version(d["apiVersion"])
        if is_core_group(group):
            core.append(d)
            continue
        schema = os.path.join(args.schemas, f"{group}-{version}.json")
        if not os.path.exists(schema):
            fail(f"{kn(d)}: API group {d['apiVersion']!r} has no schema here (add {schema})")
            continue
        if schema not in validators:
            with open(schema) as f:
                validators[schema] = jsonschema.Draft202012Validator(json.load(f))
        for e in validators[schema].iter_errors(d):
            path = ".".join(str(p) for p in e.absolute_path)
            fail(f"{kn(d)}: {path}: {e.message}")
        crs.append(d)
    with open(args.core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    # --- 2. cert-manager --------------------------------------------------------------------------
    external_issuers = load_listing(args.cluster_issuers)
    known_cluster_issuers = set(by_kind.get("ClusterIssuer", {})) | {
        d["metadata"]["name"] for d in cluster_docs if d["kind"] == "ClusterIssuer"}
    used_external = set()
    cert_secrets = {}
    for d in by_kind.get("Certificate", {}).values():
        spec = d.get("spec", {})
        cert_secrets[spec.get("secretName")] = d
        if "duration" in spec and "renewBefore" in spec:
            if go_duration_seconds(spec["renewBefore"]) >= go_duration_seconds(spec["duration"]):
                fail(f"{kn(d)}: renewBefore {spec['renewBefore']} is not below duration {spec['duration']}")
        ref = spec.get("issuerRef", {})
        name, kind = ref.get("name"), ref.get("kind", "Issuer")
        if kind == "Issuer" and name not in by_kind.get("Issuer", {}):
            fail(f"{kn(d)}: issuerRef names Issuer {name!r}, not in the render")
        if kind == "ClusterIssuer":
            if name in external_issuers:
                used_external.add(name)
            elif name not in known_cluster_issuers:
                fail(f"{kn(d)}: issuerRef names ClusterIssuer {name!r}: neither rendered, in "
                     f"{args.cluster_render or 'a cluster render'}, nor listed in --cluster-issuers")
        if args.prod and spec.get("isCA"):
            fail(f"{kn(d)}: a CA in the prod overlay; the internal CA belongs in k8s/pki "
                 "(cert-manager's namespace), council systems' CA is the operator's Secret")
    for name in sorted(set(external_issuers) - used_external):
        fail(f"ClusterIssuer {name!r} is listed in {args.cluster_issuers} but no Certificate uses it")
    for d in list(by_kind.get("Issuer", {}).values()) + list(by_kind.get("ClusterIssuer", {}).values()):
        ca = d.get("spec", {}).get("ca")
        if ca and ca.get("secretName") not in cert_secrets:
            fail(f"{kn(d)}: CA secret {ca.get('secretName')!r} is issued by no Certificate in the render")

    # --- 3. references ----------------------------------------------------------------------------
    operator = load_listing(args.operator_secrets)
    secrets = {n: set((d.get("data") or {}) | (d.get("stringData") or {}))
               for n, d in by_kind.get("Secret", {}).items()}
    configmaps = {n: dict(d.get("data") or {}) for n, d in by_kind.get("ConfigMap", {}).items()}
    accounts = set(by_kind.get("ServiceAccount", {}))
    cert_keys = {"tls.crt", "tls.key", "ca.crt"}

    def secret_keys(name):
        if name in secrets:
            return secrets[name]
        if name in cert_secrets:
            return cert_keys
        if name in operator:
            return operator[name]
        return None

    used_operator = set()
    workloads = [d for d in docs if d["kind"] in WORKLOADS and pod_template(d)]
    for d in workloads:
        ps = pod_template(d)["spec"]
        sa = ps.get("serviceAccountName")
        if sa and sa not in accounts:
            fail(f"{kn(d)}: ServiceAccount {sa!r} not in the render")
        for v in ps.get("volumes", []):
            if "secret" in v:
                name = v["secret"]["secretName"]
                keys = secret_keys(name)
                if keys is None:
                    fail(f"{kn(d)}: volume {v['name']}: Secret {name!r} is neither rendered, issued nor operator-created")
                    continue
                if name in operator:
                    used_operator.add(name)
                for item in v["secret"].get("items", []):
                    if item["key"] not in keys:
                        fail(f"{kn(d)}: volume {v['name']}: Secret {name!r} has no key {item['key']!r}")
            if "configMap" in v:
                name = v["configMap"]["name"]
                if name not in configmaps:
                    fail(f"{kn(d)}: volume {v['name']}: ConfigMap {name!r} not in the render")
        for c in ps.get("containers", []) + ps.get("initContainers", []):
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                    fail(f"{kn(d)}: envFrom ConfigMap {ef['configMapRef']['name']!r} not in the render")
                if "secretRef" in ef:
                    if secret_keys(ef["secretRef"]["name"]) is None:
                        fail(f"{kn(d)}: envFrom Secret {ef['secretRef']['name']!r} unresolved")
                    elif ef["secretRef"]["name"] in operator:
                        used_operator.add(ef["secretRef"]["name"])
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    keys = secret_keys(ref["name"])
                    if keys is None:
                        fail(f"{kn(d)}: env {e['name']}: Secret {ref['name']!r} is neither rendered nor operator-created")
                    elif ref["key"] not in keys:
                        fail(f"{kn(d)}: env {e['name']}: Secret {ref['name']!r} has no key {ref['key']!r}")
                    if ref["name"] in operator:
                        used_operator.add(ref["name"])
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref and ref["key"] not in configmaps.get(ref["name"], {}):
                    fail(f"{kn(d)}: env {e['name']}: ConfigMap key {ref['name']}/{ref['key']} not in the render")
            # A file setting must name a file a volume provides: in a serving pod every
            # CPIS_*_FILE; in any pod the URL files, which every command (`migrate` too) reads
            # as it parses its arguments.
            mounts = [m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts", [])]
            component = pod_template(d)["metadata"].get("labels", {}).get("app.kubernetes.io/component")
            env = effective_env(c, configmaps)
            if args.prod and component in DATASTORE_COMPONENTS \
                    and env.get("CPIS_REQUIRE_DATASTORE_TLS") != "true":
                fail(f"{kn(d)}: container {c['name']}: CPIS_REQUIRE_DATASTORE_TLS is not true "
                     "(prod reaches its datastores over verified TLS only)")
            for k, v in env.items():
                read = k in READ_AT_PARSE or k in READ_AT_START or (component in SERVING and re.fullmatch(r"CPIS_\w+_FILE", k))
                if read and v and not any(v.startswith(m) for m in mounts):
                    fail(f"{kn(d)}: container {c['name']}: {k}={v} is on no mounted volume")
    for name in sorted(set(operator) - used_operator):
        fail(f"operator Secret {name!r} is listed but nothing uses it")

    serving = {}  # Deployment name -> (doc, pod labels)
    for d in by_kind.get("Deployment", {}).values():
        labels = pod_template(d)["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/component") in SERVING:
            serving[d["metadata"]["name"]] = (d, labels)

    for d in by_kind.get("PodMonitor", {}).values():
        spec = d["spec"]
        matched = [(n, dl) for n, (dd, dl) in serving.items() if selects(spec["selector"], dl)]
        if not matched:
            fail(f"{kn(d)}: selects no serving Deployment's pods")
        for w in workloads:
            labels = pod_template(w)["metadata"].get("labels", {})
            if selects(spec["selector"], labels) and w["metadata"]["name"] not in serving:
                fail(f"{kn(d)}: also selects {kn(w)}'s pods, which serve no metrics")
        for n, _ in matched:
            ports = {p.get("name") for c in pod_template(serving[n][0])["spec"]["containers"]
                     for p in c.get("ports", [])}
            for ep in spec.get("podMetricsEndpoints", []):
                if ep.get("port") not in ports:
                    fail(f"{kn(d)}: Deployment/{n} has no container port named {ep.get('port')!r}")

    # --- 4. drain timing --------------------------------------------------------------------------
    resolve_every = None
    if args.resolve_source:
        resolve_every = source_number(
            args.resolve_source, r"const RESOLVE_EVERY: Duration = Duration::from_secs\((\d+)\)",
            "the gateway's RESOLVE_EVERY")
    services = list(by_kind.get("Service", {}).values())
    for name, (d, labels) in sorted(serving.items()):
        ps = pod_template(d)["spec"]
        tgps = ps.get("terminationGracePeriodSeconds", 30)
        for c in ps["containers"]:
            sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
            if sleep is None:
                fail(f"{kn(d)}: container {c['name']} has no preStop sleep: it would stop taking "
                     "calls before its load balancer or the gateway stops sending them")
                continue
            grace = effective_env(c, configmaps).get("CPIS_GRACE_PERIOD") or DEFAULT_GRACE_PERIOD
            need = sleep + int(grace) + args.drain_margin
            if tgps < need:
                fail(f"{kn(d)}: terminationGracePeriodSeconds {tgps} < preStop {sleep} + "
                     f"CPIS_GRACE_PERIOD {grace} + margin {args.drain_margin} = {need}")
            for s in services:
                if not selects(s["spec"].get("selector"), labels):
                    continue
                if s["spec"].get("type") == "LoadBalancer" and sleep < args.lb_deregistration:
                    fail(f"{kn(d)}: preStop {sleep} s < {args.lb_deregistration} s for the load "
                         f"balancer of Service/{s['metadata']['name']} to deregister the node")
                if s["spec"].get("clusterIP") == "None" and resolve_every is not None:
                    drain = args.endpoint_propagation + args.dns_ttl + resolve_every
                    if sleep < drain:
                        fail(f"{kn(d)}: preStop {sleep} s < {drain} s (endpoint propagation "
                             f"{args.endpoint_propagation} + DNS TTL {args.dns_ttl} + gateway "
                             f"re-resolution {resolve_every}) for headless Service/{s['metadata']['name']}")
    if args.prod and not any(s["spec"].get("type") == "LoadBalancer" for s in services):
        fail("prod renders no LoadBalancer Service: the drain check against the load balancer did not run")

    # --- 5. egress --------------------------------------------------------------------------------
    policies = list(by_kind.get("NetworkPolicy", {}).values())

    def is_dns_peer(peer):
        ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {})
        pod = ((peer.get("podSelector") or {}).get("matchLabels") or {})
        if ns == {"kubernetes.io/metadata.name": "kube-system"} and pod.get("k8s-app") == "kube-dns":
            return True
        cidr = (peer.get("ipBlock") or {}).get("cidr", "")
        return cidr.endswith("/32") or cidr.endswith("/128")

    def rule_ports(rule):
        return {p.get("port") for p in rule.get("ports") or [{}]}

    for p in policies:
        spec = p["spec"]
        if "Egress" not in spec.get("policyTypes", []):
            continue
        for i, rule in enumerate(spec.get("egress") or []):
            where = f"{kn(p)}: egress rule {i}"
            peers = rule.get("to") or []
            if 53 in rule_ports(rule) and not (peers and all(is_dns_peer(x) for x in peers)):
                fail(f"{where}: DNS (53) may go only to the cluster DNS pods (kube-system, "
                     "k8s-app=kube-dns) or a NodeLocal DNSCache /32")
            if not args.prod:
                continue
            if not peers:
                fail(f"{where}: no destination (`to`): it allows every address on {sorted(map(str, rule_ports(rule)))}")
            for peer in peers:
                cidr = (peer.get("ipBlock") or {}).get("cidr")
                if cidr and ipaddress.ip_network(cidr, strict=False).prefixlen == 0:
                    fail(f"{where}: ipBlock {cidr} is every address")
                if "namespaceSelector" in peer and not peer["namespaceSelector"] and "podSelector" not in peer:
                    fail(f"{where}: an empty namespaceSelector is every pod in every namespace")

    def egress_ports(labels):
        ports = set()
        for p in policies:
            spec = p["spec"]
            if "Egress" in spec.get("policyTypes", []) and selects(spec["podSelector"], labels):
                for rule in spec.get("egress") or []:
                    ports |= rule_ports(rule)
        return ports

    for w in workloads:
        labels = pod_template(w)["metadata"].get("labels", {})
        ports = egress_ports(labels)
        if labels.get("app.kubernetes.io/component") == "migration" and not ports <= MIGRATION_PORTS:
            fail(f"{kn(w)}: a migration Job's pods may reach only DNS, PostgreSQL and the "
                 f"collector ({sorted(MIGRATION_PORTS)}), not {sorted(map(str, ports - MIGRATION_PORTS))}")
        is_flag_serving = (labels.get("app.kubernetes.io/name") == "flag-service"
                           and labels.get("app.kubernetes.io/component") == "backend")
        if 6379 in ports and not is_flag_serving:
            fail(f"{kn(w)}: only flag-service's serving pods may reach Redis (6379)")

    # --- 6. connection budget ---------------------------------------------------------------------
    pool = None
    if args.pool_source:
        pool = source_number(args.pool_source,
                             r'starts_with\("sqlite:"\)\s*\{\s*\d+\s*\}\s*else\s*\{\s*(\d+)\s*\}',
                             "the PostgreSQL pool size in connect()")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind.get("HorizontalPodAutoscaler", {}).values()
            if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"}

    def uses_database(doc):
        for c in pod_template(doc)["spec"]["containers"]:
            env = effective_env(c, configmaps)
            if "CPIS_DATABASE_URL" in env or "CPIS_DATABASE_URL_FILE" in env:
                return True
        return False

    db_workloads = [w for w in workloads if uses_database(w)]
    if pool is not None and args.capacity and db_workloads:
        serving_conns, terms = 0, []
        for name, (d, _) in sorted(serving.items()):
            if not uses_database(d):
                continue
            top = hpas[name]["spec"]["maxReplicas"] if name in hpas else d["spec"].get("replicas", 1)
            surge = max_surge(d, top)
            serving_conns += (top + surge) * pool
            terms.append(f"{name} ({top}+{surge})x{pool}")
        jobs = sum(1 for j in by_kind.get("Job", {}).values() if uses_database(j))
        table = markdown_table(args.capacity, ["connections", "count", "how"])
        if table is None:
            fail(f"{args.capacity}: no table with the header | connections | count | how |")
        else:
            rows = {r[0]: int(r[1]) for r in table}
            try:
                superuser = rows["superuser_reserved_connections"]
                ops = rows["operations"]
                if args.prod:
                    max_conns = rows["max_connections"]
                    for key, value in (("migration Jobs", jobs), ("serving pods", serving_conns)):
                        if rows[key] != value:
                            fail(f"{args.capacity}: Connections says {key} {rows[key]}, the render gives {value}")
                else:
                    max_conns = None
                    for s in by_kind.get("StatefulSet", {}).values():
                        for c in pod_template(s)["spec"]["containers"]:
                            m = re.search(r"max_connections=(\d+)", " ".join(c.get("args", [])))
                            if m:
                                max_conns = int(m.group(1))
                    if max_conns is None:
                        fail("no in-cluster PostgreSQL with `-c max_connections=N`: the budget is unknown")
                if max_conns is not None:
                    total = serving_conns + jobs + superuser + ops
                    if total > max_conns:
                        fail(f"connection budget: {' + '.join(terms)} = {serving_conns} serving + {jobs} "
                             f"migration + {superuser} superuser-reserved + {ops} operations = {total} "
                             f"> max_connections {max_conns}")
                    print(f"{args.rendered}: connections {serving_conns} serving + {jobs} migration + "
                          f"{superuser + ops} reserved = {total} of max_connections {max_conns}")
            except KeyError as e:
                fail(f"{args.capacity}: Connections table has no row {e}")

    # --- 7. requests, limits and replicas against docs/capacity.md ------------------------------
    if args.prod and args.capacity:
        header = ["service", "CPU request", "CPU limit", "memory request", "memory limit",
                  "replicas (prod)", "why"]
        table = markdown_table(args.capacity, header)
        if table is None:
            fail(f"{args.capacity}: no table with the header | {' | '.join(header)} |")
            table = []
        rows = {r[0]: r for r in table}

        def compare(what, container, row):
            res = container.get("resources", {})
            for (section, key), want in zip(
                    [("requests", "cpu"), ("limits", "cpu"), ("requests", "memory"), ("limits", "memory")], row[1:5]):
                have = (res.get(section) or {}).get(key)
                if have is None or quantity(have) != quantity(want):
                    fail(f"{what}: {section}.{key} {have} but docs/capacity.md says {want}")

        for name, (d, _) in sorted(serving.items()):
            if name not in rows:
                fail(f"{args.capacity}: no row for {name}")
                continue
            for c in pod_template(d)["spec"]["containers"]:
                compare(f"{kn(d)} container {c['name']}", c, rows[name])
            h = hpas.get(name)
            have = f"{h['spec']['minReplicas']}..{h['spec']['maxReplicas']}" if h else "no HPA"
            if have != rows[name][5]:
                fail(f"{kn(d)}: replicas {have} but docs/capacity.md says {rows[name][5]}")
        for j in by_kind.get("Job", {}).values():
            row = rows.get("migration Jobs (each)")
            if row is None:
                fail(f"{args.capacity}: no row for 'migration Jobs (each)'")
                break
            for c in pod_template(j)["spec"]["containers"]:
                compare(f"{kn(j)} container {c['name']}", c, row)

    # --- 8. deploy phases -------------------------------------------------------------------------
    for d in docs:
        phase = (d["metadata"].get("labels") or {}).get(PHASE_LABEL)
        if d["kind"] == "Deployment" and d["metadata"]["name"] in serving:
            want = PHASE[serving[d["metadata"]["name"]][1]["app.kubernetes.io/component"]]
            if phase != want:
                fail(f"{kn(d)}: label {PHASE_LABEL}={phase!r}, want {want!r} (deploy.sh applies by phase)")
        elif phase is not None:
            fail(f"{kn(d)}: only serving Deployments carry {PHASE_LABEL} (deploy.sh would apply it late)")

    for e in errors:
        print(f"ERROR {args.rendered}: {e}")
    print(f"{args.rendered}: {len(core)} core resources, {len(crs)} custom resources, "
          f"{len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
