#!/usr/bin/env python3
"""check_rendered.py finds what it is there to find: each test breaks one thing in the
rendered prod overlay and expects the check's message (and the unbroken render to pass).

    python3 k8s/tests/test_check_rendered.py      (from the repository root; validate.sh runs it)

Needs kubectl (for `kubectl kustomize`), PyYAML and jsonschema (validate.sh's venv).
"""
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "k8s", "tools", "check_rendered.py")
TMP = tempfile.mkdtemp(prefix="cpis-check-rendered-test-")


def render(path):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(ROOT, path)],
                         check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


PKI = os.path.join(TMP, "pki.yaml")
with open(PKI, "w") as f:
    yaml.safe_dump_all(render("k8s/pki"), f)
PROD = render("k8s/overlays/prod")


def check(docs):
    rendered = os.path.join(TMP, "prod.yaml")
    with open(rendered, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    prod = os.path.join(ROOT, "k8s", "overlays", "prod")
    p = subprocess.run(
        [sys.executable, TOOL, rendered, os.path.join(TMP, "prod.core.yaml"),
         "--schemas", os.path.join(ROOT, "k8s", "schemas"),
         "--pool-source", os.path.join(ROOT, "platform", "src", "database.rs"),
         "--resolve-source", os.path.join(ROOT, "gateway", "src", "backends.rs"),
         "--capacity", os.path.join(ROOT, "docs", "capacity.md"),
         "--cluster-render", PKI,
         "--operator-secrets", os.path.join(prod, "operator-secrets.txt"),
         "--cluster-issuers", os.path.join(prod, "cluster-issuers.txt"),
         "--prod"],
        capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def container(docs, kind, name):
    return find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


class CheckRendered(unittest.TestCase):
    def broken(self, change, *messages):
        docs = copy.deepcopy(PROD)
        change(docs)
        code, out = check(docs)
        self.assertEqual(code, 1, out)
        for m in messages:
            self.assertIn(m, out)

    def test_the_prod_render_passes(self):
        code, out = check(copy.deepcopy(PROD))
        self.assertEqual(code, 0, out)
        self.assertIn("0 problems", out)

    def test_an_egress_rule_without_a_destination(self):
        def change(docs):
            del find(docs, "NetworkPolicy", "flag-service-egress-database")["spec"]["egress"][0]["to"]
        self.broken(change, "flag-service-egress-database: egress rule 0: no destination")

    def test_an_egress_rule_to_every_address(self):
        def change(docs):
            rule = find(docs, "NetworkPolicy", "access-service-egress-database")["spec"]["egress"][0]
            rule["to"] = [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
        self.broken(change, "ipBlock 0.0.0.0/0 is every address")

    def test_dns_to_all_of_kube_system(self):
        def change(docs):
            del find(docs, "NetworkPolicy", "allow-dns-egress")["spec"]["egress"][0]["to"][0]["podSelector"]
        self.broken(change, "DNS (53) may go only to the cluster DNS pods")

    def test_redis_for_the_migration_job(self):
        def change(docs):
            find(docs, "NetworkPolicy", "flag-service-egress-redis")["spec"]["podSelector"]["matchLabels"].pop(
                "app.kubernetes.io/component")
        self.broken(change, "Job/flag-service-migrate: a migration Job's pods may reach only",
                    "Job/flag-service-migrate: only flag-service's serving pods may reach Redis")

    def test_a_gateway_drain_shorter_than_the_load_balancer(self):
        def change(docs):
            container(docs, "Deployment", "gateway")["lifecycle"]["preStop"]["sleep"]["seconds"] = 20
        self.broken(change, "Deployment/gateway: preStop 20 s < 30 s for the load balancer")

    def test_a_backend_drain_shorter_than_dns_re_resolution(self):
        def change(docs):
            container(docs, "Deployment", "flag-service")["lifecycle"]["preStop"]["sleep"]["seconds"] = 10
        self.broken(change, "Deployment/flag-service: preStop 10 s < 12 s")

    def test_a_grace_period_too_short_for_the_drain(self):
        def change(docs):
            find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 50
        self.broken(change, "terminationGracePeriodSeconds 50 < preStop 35 + CPIS_GRACE_PERIOD 20 + margin 5 = 60")

    def test_more_replicas_than_the_connection_budget(self):
        def change(docs):
            find(docs, "HorizontalPodAutoscaler", "access-service")["spec"]["maxReplicas"] = 5
        self.broken(change, "Connections says serving pods 240, the render gives 256",
                    "> max_connections 256", "replicas 3..5 but docs/capacity.md says 3..4")

    def test_limits_that_drift_from_capacity_md(self):
        def change(docs):
            container(docs, "Deployment", "attendance-service")["resources"]["limits"]["cpu"] = "2"
        self.broken(change, "Deployment/attendance-service container attendance-service: limits.cpu 2 "
                            "but docs/capacity.md says 500m")

    def test_a_secret_key_the_operator_does_not_create(self):
        def change(docs):
            vols = find(docs, "Job", "access-service-migrate")["spec"]["template"]["spec"]["volumes"]
            next(v for v in vols if v["name"] == "database")["secret"]["items"][0]["key"] = "uri"
        self.broken(change, "Secret 'cpis-access-db-migrate' has no key 'uri'")

    def test_a_url_file_on_no_volume(self):
        def change(docs):
            c = container(docs, "Job", "flag-service-migrate")
            c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "database"]
        self.broken(change, "CPIS_DATABASE_URL_FILE=/etc/cpis/secrets/database/url is on no mounted volume")

    def test_the_datastore_ca_on_no_volume(self):
        def change(docs):
            c = container(docs, "Job", "attendance-service-migrate")
            c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "datastore-ca"]
        self.broken(change, "CPIS_DATASTORE_CA_FILE=/etc/cpis/datastore-ca/ca.crt is on no mounted volume")

    def test_a_backend_that_does_not_require_datastore_tls(self):
        def change(docs):
            config = next(d for d in docs if d["kind"] == "ConfigMap"
                          and d["metadata"]["name"].startswith("flag-service-config"))
            config["data"].pop("CPIS_REQUIRE_DATASTORE_TLS")
        self.broken(change, "Deployment/flag-service: container flag-service: CPIS_REQUIRE_DATASTORE_TLS is not true",
                    "Job/flag-service-migrate: container migrate: CPIS_REQUIRE_DATASTORE_TLS is not true")

    def test_a_podmonitor_field_the_schema_does_not_know(self):
        def change(docs):
            find(docs, "PodMonitor", "cpis")["spec"]["podMetricsEndpoints"][0]["prot"] = "metrics"
        self.broken(change, "PodMonitor/cpis: spec.podMetricsEndpoints.0: Additional properties are not allowed")

    def test_a_podmonitor_port_the_pods_lack(self):
        def change(docs):
            find(docs, "PodMonitor", "cpis")["spec"]["podMetricsEndpoints"][0]["port"] = "prometheus"
        self.broken(change, "has no container port named 'prometheus'")

    def test_a_ca_in_the_prod_overlay(self):
        def change(docs):
            find(docs, "Certificate", "gateway-internal-tls")["spec"]["isCA"] = True
        self.broken(change, "Certificate/gateway-internal-tls: a CA in the prod overlay")

    def test_a_serving_deployment_without_its_deploy_phase(self):
        def change(docs):
            del find(docs, "Deployment", "gateway")["metadata"]["labels"]["cpis/deploy-phase"]
        self.broken(change, "Deployment/gateway: label cpis/deploy-phase=None, want 'gateway'")

    def test_a_cluster_issuer_nobody_provides(self):
        def change(docs):
            find(docs, "Certificate", "flag-service-tls")["spec"]["issuerRef"]["name"] = "cpis-other"
        self.broken(change, "issuerRef names ClusterIssuer 'cpis-other'")


if __name__ == "__main__":
    try:
        unittest.main(verbosity=2)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
