#!/usr/bin/env python3
"""Checks the ws-gateway chart without a helm binary.

Uses helm-python-sdk (PyPI), whose wheel bundles libhelm_c, a C ABI over
Helm's own Go SDK (Helm v4), to lint the chart and to render it with several
sets of values. For each render: the values pass values.schema.json, every
manifest parses as YAML, the ConfigMap's gateway.toml parses as TOML and holds
exactly .Values.config (null keys and empty sections left out), and, given a
ws-gateway binary, `ws-gateway check-config` accepts that file. When the
package kubernetes-validate is installed, every manifest but the Prometheus
Operator's is also validated, strictly, against Kubernetes 1.30's schemas. Values that
must fail (schema or template `fail`) are checked to fail.

    python3 -m venv venv && venv/bin/pip install helm-python-sdk pyyaml [kubernetes-validate]
    venv/bin/python helm/check-chart.py [--binary target/release/ws-gateway]

Exit 0 when everything holds; the last line is "N passed, N failed".
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import helm_python as helm
import yaml

try:  # optional: strict validation of the manifests against Kubernetes' schemas
    import kubernetes_validate
except ImportError:
    kubernetes_validate = None

# Kubernetes version the manifests are validated against: the SDK renders with
# its default capabilities (newer than 1.30), so the `sleep` preStop action is
# in; 1.30 is the first version that has it on by default.
KUBE_SCHEMA = "1.30.0"

CHART = Path(__file__).resolve().parent / "ws-gateway"

# Values that must render, and pass check-config.
GOOD = {
    "defaults": {},
    "existing secret, metrics port, everything on": {
        "auth": {"existingSecret": {"name": "gw", "adminApiKeyKey": ""}},
        "config": {
            "server": {
                "metrics_listen": "[::]:9090",
                "allowed_origins": ["https://app.example.com"],
                "max_connections": 1000000,
                "trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
            },
            "auth": {"issuer": "https://id.example.com/<a&b>\"q\"\\\n\t\u00e9", "algorithms": ["RS256", "HS256"]},
            "connection": {"max_rooms": 0},
        },
        "extraEnv": [{"name": "GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "value": "20"}],
        "terminationGracePeriodSeconds": 30,
        "lifecycle": {"preStopExec": True},
        "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
        "ingress": {"enabled": True, "tls": [{"secretName": "t", "hosts": ["ws.example.com"]}]},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "prometheusRule": {"enabled": True},
        "podDisruptionBudget": {"minAvailable": "50%"},
    },
    "inline secret, a key removed": {
        "auth": {"secret": "s3cr3t", "adminApiKey": "k"},
        "redis": {"url": "redis://redis:6379/0"},
        "config": {"server": {"listen": None}},
        "replicaCount": 1,
    },
}

# Values that must be refused, with a word of the expected message.
BAD = {
    "misspelt config key": ({"config": {"server": {"listn": "0.0.0.0:1"}}}, "listn"),
    "unknown section": ({"config": {"sever": {}}}, "sever"),
    "algorithm none": ({"config": {"auth": {"algorithms": ["none"]}}}, "algorithms"),
    "grace period too short": ({"terminationGracePeriodSeconds": 15}, "terminationGracePeriodSeconds"),
    "grace period short of the delay": ({"config": {"server": {"shutdown_delay_secs": 11}}}, "shutdown_delay_secs (11)"),
    "grace period short of extraEnv's drain": (
        {"extraEnv": [{"name": "GATEWAY_SERVER_SHUTDOWN_DRAIN_SECS", "value": "21"}]}, "shutdown_drain_secs (21)"),
    "unknown top-level value": ({"replicas": 3}, "replicas"),
}


def prune(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = prune(v)
            if not v:
                continue
        if v is None:
            continue
        out[k] = v
    return out


def norm(x):
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [norm(v) for v in x]
    return x


def render(values):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name="ws-gateway", namespace="default", is_install=True)
        merged = chart.merge_values(values)
    return manifests, merged


def check_good(name, values, binary):
    manifests, merged = render(values)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    checked = ""
    if kubernetes_validate:
        for d in docs:
            if d["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: no schema in the package
            kubernetes_validate.validate(d, KUBE_SCHEMA, strict=True)
        checked = f"; valid (strict) for Kubernetes {KUBE_SCHEMA}"
    for rule in (d for d in docs if d["kind"] == "PrometheusRule"):
        want_groups = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())["groups"]
        if rule["spec"]["groups"] != want_groups:
            raise AssertionError("the PrometheusRule's groups are not those of files/alerts.yaml")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    text = cm["data"]["gateway.toml"]
    parsed = tomllib.loads(text)
    want = prune(merged["config"])
    if norm(parsed) != norm(want):
        raise AssertionError(f"gateway.toml {parsed!r} is not .Values.config {want!r}")
    if binary:
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "gateway.toml"
            f.write_text(text)
            env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
            env.update(GATEWAY_AUTH_SECRET="x", HOME=tmp)
            r = subprocess.run([binary, "check-config", "--config", str(f)], cwd=tmp, env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise AssertionError(f"check-config exit {r.returncode}: {r.stderr.strip()}")
    return f"{len(docs)} manifests: " + ", ".join(sorted(d["kind"] for d in docs)) + checked


def check_bad(name, values, word):
    try:
        render(values)
    except helm.HelmError as e:
        if word not in str(e):
            raise AssertionError(f"refused, but the message does not name {word!r}: {e}")
        return "refused: " + " ".join(str(e).split())[:150]
    raise AssertionError("rendered; it should have been refused")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", help="a ws-gateway binary, to run check-config on each gateway.toml")
    args = ap.parse_args()
    passed = failed = 0

    def report(label, fn, *a):
        nonlocal passed, failed
        try:
            print(f"ok   {label}: {fn(*a)}")
            passed += 1
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            print(f"FAIL {label}: {e}")
            failed += 1

    def lint(kube):
        r = helm.lint(str(CHART), strict=True, kube_version=kube)
        bad = [m for m in r["messages"] if m["severity"] >= 2] + r["errors"]
        if bad:
            raise AssertionError(bad)
        return f"{len(r['messages'])} info message(s)"

    for kube in ("v1.23.0", "v1.30.0"):
        report(f"lint --strict, kube {kube}", lint, kube)
    for name, values in GOOD.items():
        report(f"render {name}", check_good, name, values, args.binary)
    for name, (values, word) in BAD.items():
        report(f"refuse {name}", check_bad, name, values, word)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
