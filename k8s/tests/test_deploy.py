#!/usr/bin/env python3
"""deploy.sh against a stand-in kubectl (fake_kubectl.py): the order of its steps, and that a
missing prerequisite, a failed migration Job or a failed rollout stops it with a clear message
and a non-zero exit before anything later happens.

    python3 k8s/tests/test_deploy.py          (from the repository root; k8s/validate.sh runs it)

Needs the real kubectl (for `kubectl kustomize`) and PyYAML. No cluster is contacted.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "k8s", "deploy.sh")
FAKE = os.path.join(ROOT, "k8s", "tests", "fake_kubectl.py")
REAL_KUBECTL = shutil.which("kubectl")
RENDER_CACHE = tempfile.mkdtemp(prefix="cpis-deploy-test-renders-")

ZERO = "sha256:" + "0" * 64
RELEASED = "sha256:" + "ab" * 32
PROD_RELEASED = [[ZERO, RELEASED]] + [[f"cidr: 192.0.2.{n}/32", f"cidr: 10.20.0.{n}/32"] for n in (11, 12, 13, 21)]
CRDS = ["certificates.cert-manager.io", "issuers.cert-manager.io", "clusterissuers.cert-manager.io",
        "podmonitors.monitoring.coreos.com"]
BACKENDS = ["access-service", "attendance-service", "flag-service"]
JOBS = [f"{b}-migrate" for b in BACKENDS]


def operator_secrets():
    secrets = {}
    with open(os.path.join(ROOT, "k8s", "overlays", "prod", "operator-secrets.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, keys = line.split()[:2]
                secrets[name] = {k: f"s3cr3t-{name}-{k}" for k in keys.split(",")}
    return secrets


def prod_scenario(**changes):
    sc = {
        "render_sub": PROD_RELEASED,
        "crds": CRDS,
        "clusterissuers": {"cpis-public": "True"},
        "secrets": operator_secrets(),
        "jobs": {j: ["", "Complete"] for j in JOBS},
    }
    sc.update(changes)
    return sc


class Run:
    def __init__(self, overlay, scenario):
        self.tmp = tempfile.mkdtemp(prefix="cpis-deploy-test-")
        bindir = os.path.join(self.tmp, "bin")
        os.mkdir(bindir)
        wrapper = os.path.join(bindir, "kubectl")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
        os.chmod(wrapper, 0o755)
        scenario_file = os.path.join(self.tmp, "scenario.json")
        with open(scenario_file, "w") as f:
            json.dump(scenario, f)
        self.log = os.path.join(self.tmp, "calls.jsonl")
        env = dict(os.environ,
                   PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
                   FAKE_KUBECTL_SCENARIO=scenario_file,
                   FAKE_KUBECTL_LOG=self.log,
                   FAKE_KUBECTL_STATE=os.path.join(self.tmp, "state.json"),
                   REAL_KUBECTL=REAL_KUBECTL,
                   FAKE_KUBECTL_CACHE=RENDER_CACHE,
                   CPIS_DEPLOY_POLL_SECONDS="0",
                   CPIS_DEPLOY_TIMEOUT_SECONDS=scenario.get("timeout", "600"))
        p = subprocess.run(["bash", DEPLOY, overlay], env=env, capture_output=True, text=True, timeout=60)
        self.code, self.out, self.err = p.returncode, p.stdout, p.stderr
        self.calls = []
        if os.path.exists(self.log):
            with open(self.log) as f:
                self.calls = [json.loads(line) for line in f]
        shutil.rmtree(self.tmp)

    def argvs(self):
        return [" ".join(c["argv"]) for c in self.calls]

    def index(self, predicate, what):
        for i, c in enumerate(self.calls):
            if predicate(c):
                return i
        raise AssertionError(f"no call {what}; calls:\n" + "\n".join(self.argvs()))

    def applies(self):
        return [(i, c) for i, c in enumerate(self.calls) if c["argv"][:1] == ["apply"]]

    def applied(self):
        return [o for _, c in self.applies() for o in c.get("applied", [])]

    def __str__(self):
        return f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}\ncalls:\n" + "\n".join(self.argvs())


def has(c, *words):
    return all(w in c["argv"] for w in words)


class DeployOrder(unittest.TestCase):
    def test_prod_runs_prerequisites_migrations_backends_then_gateway(self):
        r = Run("prod", prod_scenario())
        self.assertEqual(r.code, 0, r)
        first_apply = r.applies()[0][0]
        # Prerequisites, all before anything is applied.
        for crd in CRDS:
            self.assertLess(r.index(lambda c: has(c, "get", "crd", crd), f"get crd {crd}"), first_apply, r)
        self.assertLess(r.index(lambda c: has(c, "get", "clusterissuer", "cpis-public"), "ClusterIssuer check"),
                        first_apply, r)
        for secret in operator_secrets():
            self.assertLess(r.index(lambda c: has(c, "get", "secret", secret), f"get secret {secret}"),
                            first_apply, r)
        # The namespace and the internal CA, waited on, before the overlay.
        (ns_i, ns), (pki_i, pki) = r.applies()[0], r.applies()[1]
        self.assertEqual(ns["applied"], ["Namespace/cpis"], r)
        self.assertIn("ClusterIssuer/cpis-internal", pki["applied"], r)
        ca_ready = r.index(lambda c: has(c, "wait", "clusterissuer/cpis-internal"), "wait for cpis-internal")
        # Then everything but the Deployments (the old Jobs deleted first), certificates waited on.
        delete = r.index(lambda c: has(c, "delete", "job"), "delete old Jobs")
        phase1_i, phase1 = r.applies()[2]
        self.assertLess(ca_ready, delete, r)
        self.assertLess(delete, phase1_i, r)
        self.assertIn("!cpis/deploy-phase", phase1["argv"], r)
        self.assertFalse([o for o in phase1["applied"] if o.startswith("Deployment/")], r)
        for job in JOBS:
            self.assertIn(f"Job/{job}", phase1["applied"], r)
        certs = r.index(lambda c: has(c, "wait", "certificate", "--all"), "wait for certificates")
        self.assertLess(phase1_i, certs, r)
        # Every migration Complete before any Deployment; the backends, each rolled out, before
        # the gateway is applied.
        last_poll = max(i for i, c in enumerate(r.calls)
                        if any(c["argv"][2:4] == ["get", "job.batch/" + j] for j in JOBS))
        (b_i, backends), (g_i, gateway) = r.applies()[3], r.applies()[4]
        self.assertLess(certs, last_poll, r)
        self.assertLess(last_poll, b_i, r)
        self.assertEqual(sorted(backends["applied"]), [f"Deployment/{b}" for b in BACKENDS], r)
        self.assertEqual(gateway["applied"], ["Deployment/gateway"], r)
        for b in BACKENDS:
            rolled = r.index(lambda c: has(c, "rollout", "status", f"deployment.apps/{b}"), f"rollout of {b}")
            self.assertLess(b_i, rolled, r)
            self.assertLess(rolled, g_i, r)
        self.assertLess(g_i, r.index(lambda c: has(c, "rollout", "status", "deployment.apps/gateway"), "gateway rollout"), r)
        # Everything in the render was applied, and nothing twice.
        self.assertEqual(len(r.applied()), len(set(r.applied())), r)
        self.assertIn("prod deployed", r.out, r)
        # No Secret value ever printed.
        for values in operator_secrets().values():
            for v in values.values():
                self.assertNotIn(v, r.out + r.err)

    def test_dev_needs_no_operator_secrets_nor_the_prometheus_operator(self):
        r = Run("dev", {"crds": CRDS[:3], "jobs": {j: ["Complete"] for j in JOBS}})
        self.assertEqual(r.code, 0, r)
        self.assertFalse([c for c in r.calls if has(c, "get", "secret")], r)
        self.assertIn("StatefulSet/postgres", r.applies()[2][1]["applied"], r)


class DeployStops(unittest.TestCase):
    def assertStoppedBeforeDeployments(self, r, *messages):
        self.assertNotEqual(r.code, 0, r)
        self.assertIn("FAILED", r.err, r)
        for m in messages:
            self.assertIn(m, r.err, r)
        self.assertFalse([o for o in r.applied() if o.startswith("Deployment/") and o != "Deployment/redis"], r)

    def test_a_failed_migration_job_stops_at_once(self):
        jobs = {j: ["", "Complete"] for j in JOBS}
        jobs["access-service-migrate"] = ["", "Failed"]
        r = Run("prod", prod_scenario(jobs=jobs, logs={"access-service-migrate": "error: relation already exists"}))
        self.assertStoppedBeforeDeployments(r, "migration access-service-migrate failed", "relation already exists")
        polls = [c for c in r.calls if has(c, "get", "job.batch/access-service-migrate")]
        self.assertEqual(len(polls), 2, r)  # no waiting for a timeout after the failure

    def test_a_job_that_never_finishes_times_out(self):
        jobs = {j: ["Complete"] for j in JOBS}
        jobs["flag-service-migrate"] = [""]
        r = Run("prod", prod_scenario(jobs=jobs, timeout="1"))
        self.assertStoppedBeforeDeployments(r, "flag-service-migrate not complete after 1s")

    def test_a_missing_secret_key_stops_before_anything_is_applied(self):
        secrets = operator_secrets()
        secrets["cpis-flag-db"] = {"uri": "postgres://typo"}
        secrets["cpis-access-audit-key"] = {"signing-key.pem": ""}
        r = Run("prod", prod_scenario(secrets=secrets))
        self.assertNotEqual(r.code, 0, r)
        self.assertIn("Secret cpis/cpis-flag-db has no key url", r.err, r)
        self.assertIn("Secret cpis/cpis-access-audit-key has an empty signing-key.pem", r.err, r)
        self.assertIn("nothing was applied", r.err, r)
        self.assertEqual(r.applies(), [], r)
        self.assertNotIn("postgres://typo", r.out + r.err)

    def test_a_missing_secret_stops_before_anything_is_applied(self):
        secrets = operator_secrets()
        del secrets["cpis-access-db-migrate"]
        r = Run("prod", prod_scenario(secrets=secrets))
        self.assertNotEqual(r.code, 0, r)
        self.assertIn("Secret cpis/cpis-access-db-migrate does not exist", r.err, r)
        self.assertEqual(r.applies(), [], r)

    def test_a_missing_or_unready_cluster_issuer_stops_before_anything_is_applied(self):
        r = Run("prod", prod_scenario(clusterissuers={}))
        self.assertIn("ClusterIssuer cpis-public does not exist", r.err, r)
        self.assertNotEqual(r.code, 0, r)
        self.assertEqual(r.applies(), [], r)
        r = Run("prod", prod_scenario(clusterissuers={"cpis-public": "False"}))
        self.assertIn("ClusterIssuer cpis-public is not Ready", r.err, r)
        self.assertEqual(r.applies(), [], r)

    def test_missing_crds_stop_before_anything_is_applied(self):
        r = Run("prod", prod_scenario(crds=[]))
        self.assertNotEqual(r.code, 0, r)
        self.assertIn("install cert-manager", r.err, r)
        self.assertIn("install the Prometheus Operator", r.err, r)
        self.assertEqual(r.applies(), [], r)

    def test_an_internal_ca_that_never_gets_ready_stops_before_the_overlay(self):
        r = Run("prod", prod_scenario(wait={"clusterissuer/cpis-internal": 1}))
        self.assertStoppedBeforeDeployments(r, "ClusterIssuer cpis-internal is not Ready")
        self.assertEqual(len(r.applies()), 2, r)  # the namespace and the CA only

    def test_certificates_not_issued_stop_before_the_migrations(self):
        r = Run("prod", prod_scenario(wait={"certificate --all": 1}))
        self.assertStoppedBeforeDeployments(r, "certificates in cpis are not Ready")
        self.assertFalse([c for c in r.calls if c["argv"][2:3] == ["get"] and "job.batch/" in " ".join(c["argv"])], r)

    def test_a_failed_backend_rollout_never_rolls_out_the_gateway(self):
        r = Run("prod", prod_scenario(rollout={"attendance-service": 1}))
        self.assertNotEqual(r.code, 0, r)
        self.assertIn("rollout of attendance-service did not finish", r.err, r)
        self.assertIn("rollout undo", r.err, r)
        self.assertNotIn("Deployment/gateway", r.applied(), r)

    def test_unreleased_images_and_placeholder_addresses_are_refused(self):
        r = Run("prod", prod_scenario(render_sub=PROD_RELEASED[1:]))
        self.assertNotEqual(r.code, 0, r)
        self.assertIn("placeholder image digests", r.err, r)
        self.assertEqual([c for c in r.calls if c["argv"][0] != "kustomize"], [], r)
        r = Run("prod", prod_scenario(render_sub=PROD_RELEASED[:1]))
        self.assertNotEqual(r.code, 0, r)
        self.assertIn("placeholder datastore addresses", r.err, r)
        self.assertEqual([c for c in r.calls if c["argv"][0] != "kustomize"], [], r)


if __name__ == "__main__":
    if REAL_KUBECTL is None:
        sys.exit("test_deploy.py needs kubectl on PATH (for kubectl kustomize)")
    try:
        unittest.main(verbosity=2)
    finally:
        shutil.rmtree(RENDER_CACHE, ignore_errors=True)
