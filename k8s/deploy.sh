#!/usr/bin/env bash
# Deploys an overlay in the order the services need: prerequisites, then the migration Jobs
# (waited for), then the Deployments. Re-running it is an upgrade.
#
#   bash k8s/deploy.sh dev|prod        (kubectl pointed at the target cluster)
set -euo pipefail

overlay="${1:?usage: k8s/deploy.sh dev|prod}"
dir="$(cd "$(dirname "$0")" && pwd)/overlays/$overlay"
ns=cpis
[[ -d "$dir" ]] || { echo "no overlay $dir" >&2; exit 2; }

rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
kubectl kustomize "$dir" > "$rendered"

# Never roll out an unreleased image.
if grep -q 'sha256:0\{64\}' "$rendered"; then
    echo "refusing: $overlay pins placeholder image digests; set the released ones first (k8s/README.md, Releasing)" >&2
    exit 1
fi
# cert-manager must be installed: the Certificates are its resources.
kubectl get crd certificates.cert-manager.io >/dev/null
# prod: the Secrets the operator owns must exist before anything starts.
if [[ -f "$dir/operator-secrets.txt" ]]; then
    missing=0
    while read -r name _; do
        kubectl -n "$ns" get secret "$name" >/dev/null 2>&1 || { echo "missing Secret $ns/$name" >&2; missing=1; }
    done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$dir/operator-secrets.txt")
    [[ $missing -eq 0 ]] || { echo "create them first (k8s/README.md, Deploying)" >&2; exit 1; }
fi

# 1. Everything except the Deployments, so Secrets, Certificates, NetworkPolicies and the
#    datastores (dev) exist. Finished migration Jobs are deleted first: a Job's pod template
#    is immutable, and a new release must run its own migrations.
kubectl -n "$ns" delete job -l app.kubernetes.io/component=migration --ignore-not-found --wait=true
kubectl apply -f "$rendered" -l 'cpis/rollout!=after-migrations'

# 2. Migrations must finish before any new service version starts.
kubectl -n "$ns" wait --for=condition=complete job -l app.kubernetes.io/component=migration --timeout=10m

# 3. The Deployments, then wait for the rollout.
kubectl apply -f "$rendered"
for d in access-service flag-service attendance-service gateway; do
    kubectl -n "$ns" rollout status "deployment/$d" --timeout=10m
done
