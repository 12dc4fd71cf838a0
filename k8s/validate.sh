#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests and the Dockerfile. No cluster, no Docker.
#
#   bash k8s/validate.sh            (from the repository root)
#
# 1. A venv ("${CPIS_K8S_VENV:-$PWD/target/venv-k8s}") with pinned kubernetes-validate and
#    checkov (pip caches downloads in ~/.cache/pip; an up-to-date venv is not touched).
# 2. Renders k8s/namespace, k8s/pki and each overlay with `kubectl kustomize` into
#    target/k8s-rendered/<name>.yaml.
# 3. k8s/tools/check_rendered.py (its docstring lists every check): custom resources
#    (cert-manager, the PodMonitor) strictly against k8s/schemas/<group>-<version>.json, any
#    other unknown API group failing; every Secret/ConfigMap/ServiceAccount a pod uses exists
#    (prod: or is in operator-secrets.txt, key by key); issuers resolve; drain timing against
#    the load balancer and the gateway's DNS re-resolution; egress (DNS to kube-dns only,
#    migration Jobs to PostgreSQL only, Redis for flag-service's serving pods only; prod: no
#    rule without a destination); the PostgreSQL connection budget; prod's requests, limits
#    and replicas against docs/capacity.md; the deploy phases deploy.sh applies by.
# 4. kubernetes-validate --strict against Kubernetes $K8S_VERSION on the core kinds; a
#    missing schema is a failure there, not a warning.
# 5. checkov on each rendered overlay and on the Dockerfile; any failed check fails. The only
#    skips are k8s/checkov-skips.txt's, which must match README.md's table. (k8s/namespace
#    and k8s/pki hold no workload: steps 3 and 4 only.)
# 6. k8s/tests: test_check_rendered.py breaks the prod render one way at a time and expects
#    check_rendered.py to say so; test_deploy.py runs deploy.sh against a stand-in kubectl
#    (the order of its steps; a missing prerequisite, a failed Job or rollout stops it).
set -euo pipefail

K8S_VERSION=1.31.0
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
OVERLAYS=(dev prod)
# Drain timing (check_rendered.py): a public load balancer (health-check interval x unhealthy
# threshold) takes up to this long to stop sending new connections to a node whose gateway pod
# is going; an endpoint removal takes this long to reach kube-proxy and CoreDNS; CoreDNS
# answers for a headless Service with this TTL (its kubernetes plugin's default); and
# terminationGracePeriodSeconds must leave this margin after preStop + CPIS_GRACE_PERIOD.
LB_DEREGISTRATION_SECONDS=30
ENDPOINT_PROPAGATION_SECONDS=2
DNS_TTL_SECONDS=5
DRAIN_MARGIN_SECONDS=5

if [[ ! -f k8s/validate.sh ]]; then
    echo "run from the repository root: bash k8s/validate.sh" >&2
    exit 2
fi
VENV="${CPIS_K8S_VENV:-$PWD/target/venv-k8s}"
OUT=target/k8s-rendered
SKIPS_FILE=k8s/checkov-skips.txt
start=$SECONDS

command -v kubectl >/dev/null || { echo "kubectl is needed (kubectl kustomize renders offline)" >&2; exit 2; }

# --- 1. tools --------------------------------------------------------------------------------
pins="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION checkov==$CHECKOV_VERSION"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if [[ "$(cat "$VENV/.cpis-k8s-pins" 2>/dev/null || true)" != "$pins" ]]; then
    # shellcheck disable=SC2086 # $pins is two words on purpose
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $pins
    echo "$pins" > "$VENV/.cpis-k8s-pins"
fi

# --- skips: the file and README.md's table must agree ------------------------------------------
# Prints "ID<TAB>SCOPES<TAB>REASON" per skip.
read_skips() {
    sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' "$SKIPS_FILE" |
        sed -E 's/^[[:space:]]*([A-Z0-9_]+)[[:space:]]+([a-z,]+)[[:space:]]+#[[:space:]]*(.*[^[:space:]])[[:space:]]*$/\1\t\2\t\3/'
}
while IFS=$'\t' read -r id scopes reason; do
    if [[ -z "$reason" || ! "$id" =~ ^CKV2?_[A-Z0-9_]+$ ]]; then
        echo "FAIL $SKIPS_FILE: malformed line for '$id' (want: ID  SCOPES  # reason)" >&2
        exit 1
    fi
done < <(read_skips)
readme_rows=$(grep -E '^\| *`?CKV' k8s/README.md |
    sed -E 's/^\| *`?([A-Z0-9_]+)`? *\| *([a-z,]+) *\| *(.*[^ ]) *\|$/\1\t\2\t\3/; s/ +/ /g' || true)
file_rows=$(read_skips | sed -E 's/ +/ /g')
if [[ "$(sort <<<"$readme_rows")" != "$(sort <<<"$file_rows")" ]]; then
    echo "FAIL checkov skips in $SKIPS_FILE and the table in k8s/README.md differ:" >&2
    diff <(sort <<<"$file_rows") <(sort <<<"$readme_rows") >&2 || true
    exit 1
fi
skips_for() { # scope -> comma-joined check ids
    read_skips | awk -F'\t' -v s="$1" '{ n = split($2, a, ","); for (i = 1; i <= n; i++) if (a[i] == s) print $1 }' |
        paste -sd, -
}
run_checkov() { # file framework scope
    local skip
    skip=$(skips_for "$3")
    "$VENV/bin/checkov" -f "$1" --framework "$2" --quiet --compact --skip-download \
        ${skip:+--skip-check "$skip"}
}

# --- 2-5. renders -----------------------------------------------------------------------------
mkdir -p "$OUT"
failed=0
check() { # name rendered [check_rendered options...]
    local name=$1 rendered=$2 core="$OUT/$1.core.yaml" kv_out
    shift 2
    "$VENV/bin/python" k8s/tools/check_rendered.py "$rendered" "$core" --schemas k8s/schemas \
        --pool-source platform/src/database.rs --resolve-source gateway/src/backends.rs \
        --capacity docs/capacity.md \
        --lb-deregistration "$LB_DEREGISTRATION_SECONDS" \
        --endpoint-propagation "$ENDPOINT_PROPAGATION_SECONDS" --dns-ttl "$DNS_TTL_SECONDS" \
        --drain-margin "$DRAIN_MARGIN_SECONDS" "$@" || failed=1
    kv_out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$core") || failed=1
    if [[ -n "$kv_out" ]]; then
        echo "$kv_out"
        failed=1  # with the custom resources split off, even a WARN (missing schema) fails
    fi
    echo "$core: kubernetes-validate --strict against $K8S_VERSION: $([[ -z "$kv_out" ]] && echo ok || echo FAILED)"
}

# Applied once, before any overlay (deploy.sh): the namespace, and the internal CA in
# cert-manager's namespace.
for base in namespace pki; do
    kubectl kustomize "k8s/$base" > "$OUT/$base.yaml"
    check "$base" "$OUT/$base.yaml"
done

for overlay in "${OVERLAYS[@]}"; do
    rendered="$OUT/$overlay.yaml"
    kubectl kustomize "k8s/overlays/$overlay" > "$rendered"

    extra=(--cluster-render "$OUT/pki.yaml")
    for listing in operator-secrets cluster-issuers; do
        if [[ -f "k8s/overlays/$overlay/$listing.txt" ]]; then
            extra+=("--$listing" "k8s/overlays/$overlay/$listing.txt")
        fi
    done
    if [[ $overlay == prod ]]; then
        extra+=(--prod)
    fi
    check "$overlay" "$rendered" "${extra[@]}"

    run_checkov "$rendered" kubernetes "$overlay" || failed=1
done
run_checkov Dockerfile dockerfile dockerfile || failed=1

# --- 6. the checks' own tests, and deploy.sh against a stand-in kubectl ----------------------------
"$VENV/bin/python" k8s/tests/test_check_rendered.py || failed=1
"$VENV/bin/python" k8s/tests/test_deploy.py || failed=1

if grep -q 'sha256:0\{64\}' "$OUT/prod.yaml"; then
    echo "NOTE prod images carry the all-zero placeholder digest: release pins the real ones (k8s/README.md, \"Releasing\")."
fi
if grep -q 'cidr: 192\.0\.2\.' "$OUT/prod.yaml"; then
    echo "NOTE prod's datastore addresses are the 192.0.2.x placeholders: the operator sets them in k8s/overlays/prod/datastore-egress.yaml."
fi
if [[ $failed -ne 0 ]]; then
    echo "k8s validation FAILED ($((SECONDS - start)) s)"
    exit 1
fi
echo "k8s validation passed: namespace, pki, ${OVERLAYS[*]}, Dockerfile and deploy.sh, $(read_skips | wc -l) checkov skips ($((SECONDS - start)) s)"
