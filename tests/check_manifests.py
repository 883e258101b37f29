#!/usr/bin/env python3
"""Checks the Kubernetes manifests under envoy/ (Istio, Envoy Gateway) without a cluster.

Every document must parse, have a known apiVersion/kind, use only the spec fields its CRD defines
(the lists below are taken from the CRDs: Istio 1.27 WasmPlugin/EnvoyFilter/DestinationRule, Envoy
Gateway v1alpha1 EnvoyExtensionPolicy), and use valid enum values. `--plugin-configs` prints the
filter configurations found (WasmPlugin.pluginConfig, EnvoyExtensionPolicy wasm[].config) as JSON,
for tests/deploy_manifests.rs to run through the filter's own config validation.
"""
import glob
import json
import os
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

SPEC_FIELDS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): {
        "selector", "targetRef", "targetRefs", "url", "sha256", "imagePullPolicy", "imagePullSecret",
        "pluginConfig", "pluginName", "phase", "priority", "failStrategy", "vmConfig", "match", "type",
    },
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): {
        "workloadSelector", "targetRefs", "configPatches", "priority",
    },
    ("networking.istio.io/v1beta1", "DestinationRule"): {
        "host", "trafficPolicy", "subsets", "exportTo", "workloadSelector",
    },
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"): {
        "targetRef", "targetRefs", "targetSelectors", "wasm", "extProc", "lua",
    },
    ("v1", "Secret"): None,  # core type, no spec
}
ENUMS = {
    "phase": {"UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"},
    "failStrategy": {"FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"},
    "imagePullPolicy": {"UNSPECIFIED_POLICY", "IfNotPresent", "Always"},
    "applyTo": {"INVALID", "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION",
                "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER"},
    "operation": {"INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"},
    "context": {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"},
}
VM_ENV_FIELDS = {"name", "value", "valueFrom"}
VM_ENV_FROM = {"INLINE", "HOST"}
EEP_WASM_FIELDS = {"name", "rootID", "code", "config", "failOpen", "env"}


def problems_of(doc, where):
    out = []
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if (api, kind) not in SPEC_FIELDS:
        return [f"{where}: unknown apiVersion/kind {api}/{kind}"]
    if not doc.get("metadata", {}).get("name"):
        out.append(f"{where}: metadata.name is required")
    allowed = SPEC_FIELDS[(api, kind)]
    if allowed is None:
        return out
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return out + [f"{where}: spec must be an object"]
    out += [f"{where}: spec.{k} is not a field of {kind}" for k in spec if k not in allowed]
    for field in ("phase", "failStrategy", "imagePullPolicy"):
        if field in spec and spec[field] not in ENUMS[field]:
            out.append(f"{where}: spec.{field}: {spec[field]!r} is not one of {sorted(ENUMS[field])}")
    if kind == "WasmPlugin":
        if not spec.get("url"):
            out.append(f"{where}: spec.url is required")
        for e in spec.get("vmConfig", {}).get("env", []):
            out += [f"{where}: vmConfig.env.{k} is not a field" for k in e if k not in VM_ENV_FIELDS]
            if e.get("valueFrom", "INLINE") not in VM_ENV_FROM:
                out.append(f"{where}: vmConfig.env.valueFrom must be INLINE or HOST")
    if kind == "EnvoyFilter":
        for p in spec.get("configPatches", []):
            for field, value in (("applyTo", p.get("applyTo")), ("operation", p.get("patch", {}).get("operation")),
                                 ("context", p.get("match", {}).get("context", "ANY"))):
                if value not in ENUMS[field]:
                    out.append(f"{where}: configPatches.{field}: {value!r} is not valid")
    if kind == "EnvoyExtensionPolicy":
        for w in spec.get("wasm", []):
            out += [f"{where}: wasm.{k} is not a field" for k in w if k not in EEP_WASM_FIELDS]
            if w.get("code", {}).get("type") not in {"HTTP", "Image", "ConfigMap"}:
                out.append(f"{where}: wasm.code.type must be HTTP, Image or ConfigMap")
    return out


def main():
    files = sorted(glob.glob(os.path.join(ROOT, "envoy", "*", "*.yaml")))
    problems, configs = [], []
    for path in files:
        rel = os.path.relpath(path, ROOT)
        with open(path) as f:
            try:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                problems.append(f"{rel}: not YAML: {e}")
                continue
        for i, doc in enumerate(docs):
            where = f"{rel}[{i}] {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            problems += problems_of(doc, where)
            if doc.get("kind") == "WasmPlugin":
                configs.append({"source": where, "config": doc["spec"].get("pluginConfig")})
            if doc.get("kind") == "EnvoyExtensionPolicy":
                for w in doc["spec"].get("wasm", []):
                    configs.append({"source": where, "config": w.get("config")})
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if "--plugin-configs" in sys.argv:
        print(json.dumps(configs))
    else:
        for path in files:
            print(f"checked: {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
