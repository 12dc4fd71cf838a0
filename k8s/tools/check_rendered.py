#!/usr/bin/env python3
"""Checks on one rendered overlay that neither kubernetes-validate nor checkov make.

1. Splits the render into core kinds (validated by kubernetes-validate --strict, which has
   their schemas) and cert-manager custom resources (which it has not); any other API group
   fails, so a new CRD cannot slip through unvalidated.
2. Validates every cert-manager resource against k8s/schemas/cert-manager.io-v1.json (strict),
   checks renewBefore < duration and that each issuerRef names an Issuer in the render (or an
   allowed external ClusterIssuer).
3. Resolves every Secret, ConfigMap and ServiceAccount a pod template uses: to a resource in
   the render, a Certificate's secretName, or a Secret the operator creates (the overlay's
   operator-secrets.txt), key by key.
4. Drain timing: terminationGracePeriodSeconds >= preStop sleep + CPIS_GRACE_PERIOD + 1.

Usage: check_rendered.py RENDERED.yaml CORE_OUT.yaml SCHEMA.json
           [--operator-secrets FILE] [--external-cluster-issuer NAME ...]
"""
import argparse
import json
import re
import sys

import jsonschema
import yaml

CR_GROUPS = {"cert-manager.io"}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}

errors = []


def fail(msg):
    errors.append(msg)


def group_of(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def is_core_group(group):
    # Built-in groups: the legacy "" group, un-dotted groups (apps, batch, policy, autoscaling)
    # and *.k8s.io.
    return group == "" or "." not in group or group.endswith(".k8s.io")


def go_duration_seconds(text):
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", text))


def kn(doc):
    return f"{doc['kind']}/{doc['metadata']['name']}"


def pod_spec(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec")


def load_operator_secrets(path):
    secrets = {}
    if not path:
        return secrets
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, keys = line.split()[:2]
                secrets[name] = set(keys.split(","))
    return secrets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("core_out")
    ap.add_argument("schema")
    ap.add_argument("--operator-secrets")
    ap.add_argument("--external-cluster-issuer", action="append", default=[])
    args = ap.parse_args()

    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    core, crs = [], []
    for d in docs:
        g = group_of(d["apiVersion"])
        if g in CR_GROUPS:
            crs.append(d)
        elif is_core_group(g):
            core.append(d)
        else:
            fail(f"{kn(d)}: API group {g!r} has no schema here (add one to k8s/schemas/)")
    with open(args.core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)

    # 2. cert-manager resources.
    with open(args.schema) as f:
        validator = jsonschema.Draft202012Validator(json.load(f))
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    cert_secrets = {}
    for d in crs:
        for e in validator.iter_errors(d):
            path = ".".join(str(p) for p in e.absolute_path)
            fail(f"{kn(d)}: {path}: {e.message}")
        spec = d.get("spec", {})
        if d["kind"] == "Certificate":
            cert_secrets[spec.get("secretName")] = d
            if "duration" in spec and "renewBefore" in spec:
                if go_duration_seconds(spec["renewBefore"]) >= go_duration_seconds(spec["duration"]):
                    fail(f"{kn(d)}: renewBefore {spec['renewBefore']} is not below duration {spec['duration']}")
            ref = spec.get("issuerRef", {})
            kind = ref.get("kind", "Issuer")
            if kind == "Issuer" and ref.get("name") not in by_kind.get("Issuer", {}):
                fail(f"{kn(d)}: issuerRef names Issuer {ref.get('name')!r}, not in the render")
            if kind == "ClusterIssuer" and ref.get("name") not in by_kind.get("ClusterIssuer", {}) \
                    and ref.get("name") not in args.external_cluster_issuer:
                fail(f"{kn(d)}: issuerRef names ClusterIssuer {ref.get('name')!r}, neither rendered nor allowed")
    for d in crs:
        ca = d.get("spec", {}).get("ca")
        if ca and ca.get("secretName") not in cert_secrets:
            fail(f"{kn(d)}: CA secret {ca.get('secretName')!r} is issued by no Certificate in the render")

    # 3. References from pod templates.
    operator = load_operator_secrets(args.operator_secrets)
    secrets = {n: set((d.get("data") or {}) | (d.get("stringData") or {}))
               for n, d in by_kind.get("Secret", {}).items()}
    configmaps = {n: set(d.get("data") or {}) for n, d in by_kind.get("ConfigMap", {}).items()}
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
    for d in docs:
        if d["kind"] not in WORKLOADS:
            continue
        ps = pod_spec(d)
        if ps is None:
            continue
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
                used_operator.add(name) if name in operator else None
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
                if "secretRef" in ef and secret_keys(ef["secretRef"]["name"]) is None:
                    fail(f"{kn(d)}: envFrom Secret {ef['secretRef']['name']!r} unresolved")
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
                if ref and ref["key"] not in configmaps.get(ref["name"], set()):
                    fail(f"{kn(d)}: env {e['name']}: ConfigMap key {ref['name']}/{ref['key']} not in the render")
    for name in sorted(set(operator) - used_operator):
        fail(f"operator Secret {name!r} is listed but nothing uses it")

    # 4. Drain timing for the services (the common ConfigMap holds CPIS_GRACE_PERIOD).
    common = next((d for n, d in by_kind.get("ConfigMap", {}).items() if n.startswith("cpis-common-config")), None)
    grace = int((common or {}).get("data", {}).get("CPIS_GRACE_PERIOD", "20"))
    for d in by_kind.get("Deployment", {}).values():
        ps = pod_spec(d)
        for c in ps["containers"]:
            sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
            if sleep is None:
                continue
            tgps = ps.get("terminationGracePeriodSeconds", 30)
            if tgps < sleep + grace + 1:
                fail(f"{kn(d)}: terminationGracePeriodSeconds {tgps} < preStop {sleep} + grace {grace} + 1")

    for e in errors:
        print(f"ERROR {args.rendered}: {e}")
    print(f"{args.rendered}: {len(core)} core resources, {len(crs)} cert-manager resources, "
          f"{len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
