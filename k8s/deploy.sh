#!/usr/bin/env bash
# Deploys an overlay in the order the services need, waiting on each step and stopping at the
# first failure with a message and a non-zero exit. Re-running it is an upgrade.
#
#   bash k8s/deploy.sh dev|prod        (kubectl pointed at the target cluster)
#
# 0. Renders the overlay and k8s/pki; refuses unreleased images (all-zero digests) and the
#    placeholder datastore addresses (192.0.2.x) of prod.
# 1. Prerequisites, read only, all reported together before anything is applied: the CRDs the
#    render uses (cert-manager; the Prometheus Operator's for a PodMonitor), every ClusterIssuer
#    the overlay names that the platform provides (cluster-issuers.txt) present and Ready, and
#    every Secret the operator creates (operator-secrets.txt) with each key present and
#    non-empty. Secret values are never printed: only key names and lengths are read.
# 2. The namespace (k8s/namespace) and the internal CA (k8s/pki), waited on until the CA
#    Certificate and the ClusterIssuer cpis-internal are Ready.
# 3. Everything but the Deployments (ConfigMaps, Secrets, Certificates, NetworkPolicies,
#    Services, PDBs, HPAs, the migration Jobs, dev's datastores), after deleting the previous
#    release's migration Jobs (a Job's pod template is immutable); then waits for every
#    Certificate in the namespace to be Ready.
# 4. The migration Jobs, watched until each is Complete; a Failed one stops the deploy at once
#    (its last log lines shown), as does the timeout.
# 5. The backends (cpis/deploy-phase=backends), each rollout waited on.
# 6. The gateway (cpis/deploy-phase=gateway), waited on: it starts only once the backends it
#    calls serve the new release.
#
# CPIS_DEPLOY_TIMEOUT_SECONDS (600) bounds each wait; CPIS_DEPLOY_POLL_SECONDS (5) is how often
# the Jobs are looked at. k8s/tests/test_deploy.py runs this script against a stand-in kubectl.
set -euo pipefail

overlay="${1:?usage: k8s/deploy.sh dev|prod}"
k8s="$(cd "$(dirname "$0")" && pwd)"
dir="$k8s/overlays/$overlay"
ns=cpis
timeout="${CPIS_DEPLOY_TIMEOUT_SECONDS:-600}"
poll="${CPIS_DEPLOY_POLL_SECONDS:-5}"
[[ -d "$dir" ]] || { echo "deploy.sh: no overlay $dir" >&2; exit 2; }

say() { echo "deploy.sh: $*"; }
die() { echo "deploy.sh: FAILED: $*" >&2; exit 1; }
listing() { # file -> its entries, comments and blank lines dropped
    [[ -f "$1" ]] && sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$1"
    return 0
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rendered="$work/overlay.yaml"
kubectl kustomize "$dir" > "$rendered"
kubectl kustomize "$k8s/namespace" > "$work/namespace.yaml"
kubectl kustomize "$k8s/pki" > "$work/pki.yaml"

# --- 0. never an unreleased image, never a placeholder address ------------------------------------
if grep -q 'sha256:0\{64\}' "$rendered"; then
    die "$overlay pins placeholder image digests; set the released ones first (k8s/README.md, Releasing)"
fi
if grep -q 'cidr: 192\.0\.2\.' "$rendered"; then
    die "$overlay still has the placeholder datastore addresses (192.0.2.x); set them in $dir/datastore-egress.yaml (k8s/README.md, Deploying)"
fi

# --- 1. prerequisites -------------------------------------------------------------------------
say "checking prerequisites"
problems=()
crds=(certificates.cert-manager.io issuers.cert-manager.io clusterissuers.cert-manager.io)
for crd in "${crds[@]}"; do
    kubectl get crd "$crd" >/dev/null 2>&1 ||
        problems+=("CRD $crd is not installed: install cert-manager (its CRDs and controller)")
done
if grep -q '^kind: PodMonitor$' "$rendered"; then
    kubectl get crd podmonitors.monitoring.coreos.com >/dev/null 2>&1 ||
        problems+=("CRD podmonitors.monitoring.coreos.com is not installed: install the Prometheus Operator")
fi
while read -r issuer _; do
    ready=$(kubectl get clusterissuer "$issuer" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || {
        problems+=("ClusterIssuer $issuer does not exist (see $dir/cluster-issuers.txt)")
        continue
    }
    [[ "$ready" == True ]] || problems+=("ClusterIssuer $issuer is not Ready (kubectl describe clusterissuer $issuer)")
done < <(listing "$dir/cluster-issuers.txt")
# Key names and value lengths only: a value never reaches this terminal.
keys_template='{{range $k, $v := .data}}{{$k}} {{len $v}}{{"\n"}}{{end}}'
while read -r secret keys _; do
    have=$(kubectl -n "$ns" get secret "$secret" -o go-template="$keys_template" 2>/dev/null) || {
        problems+=("Secret $ns/$secret does not exist (see $dir/operator-secrets.txt)")
        continue
    }
    for key in ${keys//,/ }; do
        length=$(awk -v k="$key" '$1 == k { print $2 }' <<<"$have")
        if [[ -z "$length" ]]; then
            problems+=("Secret $ns/$secret has no key $key")
        elif [[ "$length" -eq 0 ]]; then
            problems+=("Secret $ns/$secret has an empty $key")
        fi
    done
done < <(listing "$dir/operator-secrets.txt")
if [[ ${#problems[@]} -gt 0 ]]; then
    printf 'deploy.sh: missing prerequisite: %s\n' "${problems[@]}" >&2
    die "${#problems[@]} prerequisite(s) missing; nothing was applied (k8s/README.md, Deploying)"
fi

# --- 2. the namespace and the internal CA -------------------------------------------------------
say "applying the namespace and the internal CA"
kubectl apply -f "$work/namespace.yaml"
kubectl apply -f "$work/pki.yaml"
kubectl -n cert-manager wait --for=condition=Ready certificate/cpis-internal-ca --timeout="${timeout}s" ||
    die "the internal CA certificate is not Ready (kubectl -n cert-manager describe certificate cpis-internal-ca)"
kubectl wait --for=condition=Ready clusterissuer/cpis-internal --timeout="${timeout}s" ||
    die "ClusterIssuer cpis-internal is not Ready (kubectl describe clusterissuer cpis-internal)"

# --- 3. everything but the Deployments ------------------------------------------------------------
say "applying configuration, certificates, policies and the migration Jobs"
kubectl -n "$ns" delete job -l app.kubernetes.io/component=migration --ignore-not-found --wait=true
kubectl apply -f "$rendered" -l '!cpis/deploy-phase'
kubectl -n "$ns" wait --for=condition=Ready certificate --all --timeout="${timeout}s" ||
    die "certificates in $ns are not Ready: the services could not start (kubectl -n $ns describe certificate)"

# --- 4. migrations: Complete, or stop at the first Failed -----------------------------------------
names=$(kubectl -n "$ns" get job -l app.kubernetes.io/component=migration -o name) ||
    die "cannot list the migration Jobs"
mapfile -t jobs < <(grep . <<<"$names" || true)
[[ ${#jobs[@]} -gt 0 ]] || die "no migration Job found after applying $overlay"
say "waiting for ${#jobs[@]} migration Job(s)"
deadline=$((SECONDS + timeout))
pending=("${jobs[@]}")
while [[ ${#pending[@]} -gt 0 ]]; do
    still=()
    for job in "${pending[@]}"; do
        conditions=$(kubectl -n "$ns" get "$job" \
            -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}')
        case " $conditions " in
            *" Failed "* | *" FailureTarget "*)
                kubectl -n "$ns" logs "$job" --tail=20 >&2 || true
                die "migration ${job#*/} failed; nothing new is rolled out (kubectl -n $ns describe ${job}; logs above)"
                ;;
            *" Complete "*) say "${job#*/} complete" ;;
            *) still+=("$job") ;;
        esac
    done
    pending=("${still[@]+"${still[@]}"}")
    if [[ ${#pending[@]} -gt 0 ]]; then
        [[ $SECONDS -lt $deadline ]] ||
            die "migration Job(s) ${pending[*]#*/} not complete after ${timeout}s (kubectl -n $ns describe ${pending[0]})"
        sleep "$poll"
    fi
done

# --- 5, 6. the backends, then the gateway -------------------------------------------------------
for phase in backends gateway; do
    say "rolling out the $phase"
    applied=$(kubectl apply -f "$rendered" -l "cpis/deploy-phase=$phase" -o name) ||
        die "applying the $phase failed"
    mapfile -t deployments < <(grep '^deployment' <<<"$applied" || true)
    [[ ${#deployments[@]} -gt 0 ]] || die "no Deployment with cpis/deploy-phase=$phase in $overlay"
    for d in "${deployments[@]}"; do
        kubectl -n "$ns" rollout status "$d" --timeout="${timeout}s" ||
            die "rollout of ${d#*/} did not finish; the rest is not rolled out (undo: kubectl -n $ns rollout undo $d; k8s/README.md, Rolling back)"
    done
done
say "$overlay deployed"
