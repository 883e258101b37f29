#!/usr/bin/env python3
"""Checks the Kubernetes manifests under envoy/ (Istio, Envoy Gateway) without a cluster.

Every document must parse, have a known apiVersion/kind, use only the spec fields its CRD defines
(the lists below are taken from the CRDs: Istio 1.27 WasmPlugin/EnvoyFilter/DestinationRule, Envoy
Gateway v1alpha1 EnvoyExtensionPolicy; Kubernetes apps/v1 Deployment and v1 Service), and use valid
enum values. The credential service's Deployment must also run non-root on a read-only root
filesystem, probe /healthz and /readyz, set resources, take its secrets from a Secret that exists,
and be reached by a Service whose selector and ports match it and the DestinationRule's host. `--plugin-configs` prints the
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
    ("security.istio.io/v1", "RequestAuthentication"): {"selector", "targetRef", "targetRefs", "jwtRules"},
    ("networking.istio.io/v1beta1", "DestinationRule"): {
        "host", "trafficPolicy", "subsets", "exportTo", "workloadSelector",
    },
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"): {
        "targetRef", "targetRefs", "targetSelectors", "wasm", "extProc", "lua",
    },
    ("apps/v1", "Deployment"): {
        "replicas", "selector", "template", "strategy", "minReadySeconds", "revisionHistoryLimit",
        "progressDeadlineSeconds", "paused",
    },
    ("v1", "Service"): {
        "selector", "ports", "type", "clusterIP", "clusterIPs", "externalIPs", "sessionAffinity",
        "loadBalancerIP", "loadBalancerSourceRanges", "externalName", "externalTrafficPolicy",
        "healthCheckNodePort", "publishNotReadyAddresses", "sessionAffinityConfig", "ipFamilies",
        "ipFamilyPolicy", "allocateLoadBalancerNodePorts", "loadBalancerClass", "internalTrafficPolicy",
        "trafficDistribution",
    },
    ("v1", "Secret"): None,  # core type, no spec
}
POD_SPEC_FIELDS = {
    "containers", "initContainers", "volumes", "securityContext", "serviceAccountName",
    "automountServiceAccountToken", "terminationGracePeriodSeconds", "affinity", "tolerations",
    "nodeSelector", "topologySpreadConstraints", "priorityClassName", "imagePullSecrets",
    "enableServiceLinks", "dnsPolicy", "restartPolicy",
}
CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "ports", "env", "envFrom", "resources",
    "livenessProbe", "readinessProbe", "startupProbe", "securityContext", "volumeMounts",
    "workingDir", "lifecycle", "terminationMessagePolicy",
}
# Secrets the service reads from the environment: never inline values, always a secretKeyRef.
SERVICE_SECRET_ENV = {"CREDENTIAL_SERVICE_AUTH", "CREDENTIAL_SERVICE_DATABASE_URL"}
PEPPER_ENV = {"CREDENTIAL_SERVICE_PEPPER", "CREDENTIAL_SERVICE_PEPPERS"}
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
    if kind == "Deployment":
        out += deployment_problems(spec, where)
    if kind == "Service":
        for p in spec.get("ports", []):
            if not isinstance(p.get("port"), int):
                out.append(f"{where}: ports[].port must be an integer")
    return out


def deployment_problems(spec, where):
    out = []
    template = spec.get("template", {})
    labels = template.get("metadata", {}).get("labels", {})
    selector = spec.get("selector", {}).get("matchLabels", {})
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        out.append(f"{where}: selector.matchLabels must match the pod template's labels")
    pod = template.get("spec", {})
    out += [f"{where}: template.spec.{k} is not a field of PodSpec" for k in pod if k not in POD_SPEC_FIELDS]
    pod_sc = pod.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True:
        out.append(f"{where}: securityContext.runAsNonRoot must be true")
    containers = pod.get("containers", [])
    if not containers:
        out.append(f"{where}: no containers")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        out += [f"{cw}: {k} is not a field of Container" for k in c if k not in CONTAINER_FIELDS]
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{cw}: securityContext.readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{cw}: securityContext.allowPrivilegeEscalation must be false")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part, {})):
                out.append(f"{cw}: resources.{part} needs cpu and memory")
        port_names = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path:
                out.append(f"{cw}: {probe} must GET {path}")
            if get.get("port") not in port_names and get.get("port") not in port_names.values():
                out.append(f"{cw}: {probe} port {get.get('port')!r} is not a container port")
        env = {e.get("name"): e for e in c.get("env", [])}
        needed = set(SERVICE_SECRET_ENV)
        peppers = PEPPER_ENV & set(env)
        if not peppers:
            out.append(f"{cw}: no pepper ({' or '.join(sorted(PEPPER_ENV))}): a stolen database would be enough")
        for name in needed | peppers | ({"CREDENTIAL_SERVICE_PEPPER_ACTIVE"} & set(env)):
            e = env.get(name)
            if e is None:
                out.append(f"{cw}: env {name} is missing")
            elif "value" in e or "secretKeyRef" not in e.get("valueFrom", {}):
                out.append(f"{cw}: env {name} must come from a Secret (valueFrom.secretKeyRef)")
        for a in c.get("args", []):
            if "--database-url" in a or "postgres://" in a:
                out.append(f"{cw}: the database URL (with its password) belongs in a Secret, not args")
    return out


def cross_checks(docs_by_kind):
    """The Service selects the Deployment's pods and targets a container port; the Deployment's
    secrets exist with those keys; the DestinationRule's host is the Service."""
    out = []
    secrets = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for _, d in docs_by_kind.get("Secret", [])}
    services = docs_by_kind.get("Service", [])
    for where, dep in docs_by_kind.get("Deployment", []):
        ns = dep["metadata"].get("namespace")
        pod = dep["spec"]["template"]
        labels = pod.get("metadata", {}).get("labels", {})
        containers = pod.get("spec", {}).get("containers", [])
        for c in containers:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if not ref:
                    continue
                secret = secrets.get((ns, ref.get("name")))
                if secret is None:
                    out.append(f"{where}: env {e['name']}: no Secret {ref.get('name')!r} in {ns}")
                elif ref.get("key") not in secret.get("stringData", {}) and ref.get("key") not in secret.get("data", {}):
                    out.append(f"{where}: env {e['name']}: Secret {ref.get('name')} has no key {ref.get('key')!r}")
        port_names = {p.get("name"): p.get("containerPort") for c in containers for p in c.get("ports", [])}
        matching = [(w, s) for w, s in services
                    if s["metadata"].get("namespace") == ns and s["spec"].get("selector")
                    and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]
        if not matching:
            out.append(f"{where}: no Service selects its pods")
        for w, s in matching:
            for p in s["spec"].get("ports", []):
                target = p.get("targetPort", p.get("port"))
                if target not in port_names and target not in port_names.values():
                    out.append(f"{w}: targetPort {target!r} is not a container port of {dep['metadata']['name']}")
    for where, dr in docs_by_kind.get("DestinationRule", []):
        host = dr["spec"].get("host", "")
        names = {f"{s['metadata']['name']}.{s['metadata'].get('namespace', 'default')}.svc.cluster.local" for _, s in services}
        if services and host not in names:
            out.append(f"{where}: host {host!r} is none of the Services {sorted(names)}")
    for where, wp in docs_by_kind.get("WasmPlugin", []):
        cluster = (wp["spec"].get("pluginConfig") or {}).get("credential_service", {}).get("cluster", "")
        parts = cluster.split("|")
        if services and len(parts) == 4 and parts[0] == "outbound":
            ports = {(f"{s['metadata']['name']}.{s['metadata'].get('namespace', 'default')}.svc.cluster.local", str(p.get("port")))
                     for _, s in services for p in s["spec"].get("ports", [])}
            if (parts[3], parts[1]) not in ports:
                out.append(f"{where}: credential_service.cluster {cluster!r} is no Service port")
    return out


def main():
    files = sorted(glob.glob(os.path.join(ROOT, "envoy", "*", "*.yaml")))
    problems, configs = [], []
    docs_by_kind = {}
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
            docs_by_kind.setdefault(doc.get("kind"), []).append((where, doc))
            if doc.get("kind") == "WasmPlugin":
                configs.append({"source": where, "config": doc["spec"].get("pluginConfig")})
            if doc.get("kind") == "EnvoyExtensionPolicy":
                for w in doc["spec"].get("wasm", []):
                    configs.append({"source": where, "config": w.get("config")})
    if not problems:
        problems += cross_checks(docs_by_kind)
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
