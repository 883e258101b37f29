#!/usr/bin/env python3
"""Checks the Kubernetes manifests under envoy/istio and envoy/envoy-gateway without a cluster.

Every document must parse and match the model of its apiVersion/kind, generated from the real CRDs
and the Kubernetes OpenAPI (tests/manifest_schemas.py: strict at every depth, unknown fields fail).
The checks here are the ones no schema makes: the credential service's Deployment must run non-root
on a read-only root filesystem, probe /healthz and /readyz, set resources, take its secrets from a
Secret that exists, and be reached by a Service whose selector and ports match it and the
DestinationRule's host; the gateway must hand the filter its secrets and merge the stats tags. The
stats tags of every shipped Envoy config and mesh setting must be those of envoy/stats/tags.yaml, the
one source (Envoy's YAML cannot include files). `--plugin-configs` prints the filter configurations
found (WasmPlugin.pluginConfig, EnvoyExtensionPolicy wasm[].config) as JSON, for
tests/deploy_manifests.rs to run through the filter's own config validation; `--mesh-stats` prints
the Istio and Envoy Gateway stats settings for tests/mesh_stats.rs. `--root DIR` checks the envoy/
tree under DIR instead (the negative tests use a mutated copy).
"""
import glob
import json
import os
import sys

import yaml

from manifest_schemas import schema_problems

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MANIFEST_DIRS = ("istio", "envoy-gateway")
# The plain Envoy configs that carry the tags themselves (envoy --mode validate runs on them).
ENVOY_CONFIGS = ("envoy.yaml", "envoy-jwt-authn.yaml", "envoy-introspection.yaml")
# The stat prefix every filter stat has in Envoy (src/stats.rs, under Envoy's "wasmcustom.").
STAT_PREFIX = "wasmcustom.otp_filter."
# Secrets the service reads from the environment: never inline values, always a secretKeyRef.
SERVICE_SECRET_ENV = {"CREDENTIAL_SERVICE_AUTH", "CREDENTIAL_SERVICE_DATABASE_URL"}
PEPPER_ENV = {"CREDENTIAL_SERVICE_PEPPER", "CREDENTIAL_SERVICE_PEPPERS"}


def problems_of(doc, where):
    """What the schema cannot say about one document; it runs once the schema check passed."""
    out = []
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    # The models leave metadata.name optional (generateName); an applied manifest needs a name.
    if not doc.get("metadata", {}).get("name"):
        out.append(f"{where}: metadata.name is required")
    if kind == "WasmPlugin" and not spec.get("url"):
        out.append(f"{where}: spec.url is required: without a module the filter never runs")
    if kind == "Deployment":
        labels = spec["template"].get("metadata", {}).get("labels", {})
        selector = spec["selector"].get("matchLabels", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            out.append(f"{where}: selector.matchLabels must match the pod template's labels")
        if runs_credential_service(spec):
            out += deployment_problems(spec, where)
    return out


def runs_credential_service(spec):
    containers = spec.get("template", {}).get("spec", {}).get("containers", [])
    return any(c.get("name") == "credential-service" for c in containers)


def deployment_problems(spec, where):
    out = []
    pod = spec.get("template", {}).get("spec", {})
    pod_sc = pod.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True:
        out.append(f"{where}: securityContext.runAsNonRoot must be true")
    containers = pod.get("containers", [])
    if not containers:
        out.append(f"{where}: no containers")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
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
        if not matching and runs_credential_service(dep["spec"]):
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


def source_stats_config(root):
    """The stats_config of envoy/stats/tags.yaml, the one source of the tag regexes."""
    with open(os.path.join(root, "envoy", "stats", "tags.yaml")) as f:
        return yaml.safe_load(f)["stats_config"]


def stats_problems(root, docs_by_kind):
    """Every place that sets the filter's stats tags has the source's, and the mesh settings are
    wired: the Istio gateway mounts its override and keeps the filter's stats, Envoy Gateway merges."""
    out, source = [], source_stats_config(root)
    for name in ENVOY_CONFIGS:
        with open(os.path.join(root, "envoy", name)) as f:
            if yaml.safe_load(f).get("stats_config") != source:
                out.append(f"envoy/{name}: stats_config differs from envoy/stats/tags.yaml")
    config_maps = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
                   for _, d in docs_by_kind.get("ConfigMap", [])}
    for where, wp, gateways in wasm_plugin_gateways(docs_by_kind):
        if not gateways:
            out.append(f"{where}: no Deployment in {wp['metadata'].get('namespace')} has the pods its selector names")
        host_env = [e["name"] for e in wp["spec"].get("vmConfig", {}).get("env", [])
                    if e.get("valueFrom") == "HOST"]
        for w, gw in gateways:
            out += gateway_problems(w, gw, host_env, config_maps, source)
    proxies = docs_by_kind.get("EnvoyProxy", [])
    if docs_by_kind.get("EnvoyExtensionPolicy") and not proxies:
        out.append("envoy/envoy-gateway: no EnvoyProxy merges the stats tags")
    for where, proxy in proxies:
        boot = proxy["spec"].get("bootstrap") or {}
        if boot.get("type") != "Merge":
            out.append(f"{where}: bootstrap.type must be Merge (Replace would drop Envoy Gateway's own)")
        elif (yaml.safe_load(boot.get("value") or "") or {}).get("stats_config") != source:
            out.append(f"{where}: bootstrap.value's stats_config differs from envoy/stats/tags.yaml")
    return out


def wasm_plugin_gateways(docs_by_kind):
    """Each WasmPlugin with the Deployments (in its namespace) whose pods its selector names."""
    for where, wp in docs_by_kind.get("WasmPlugin", []):
        selector = wp["spec"].get("selector", {}).get("matchLabels", {})
        ns = wp["metadata"].get("namespace")
        yield where, wp, [(w, d) for w, d in docs_by_kind.get("Deployment", [])
                          if d["metadata"].get("namespace") == ns and selector and all(
                              d["spec"]["template"].get("metadata", {}).get("labels", {}).get(k) == v
                              for k, v in selector.items())]


def istio_proxy(gw):
    return next((c for c in gw["spec"]["template"]["spec"].get("containers", [])
                 if c.get("name") == "istio-proxy"), None)


def bootstrap_override(gw, proxy, config_maps):
    """The ISTIO_BOOTSTRAP_OVERRIDE path and the text of that file in the mounted ConfigMap."""
    pod = gw["spec"]["template"]["spec"]
    env = {e["name"]: e for e in proxy.get("env", [])}
    path = env.get("ISTIO_BOOTSTRAP_OVERRIDE", {}).get("value", "")
    mount = next((m for m in proxy.get("volumeMounts", [])
                  if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    volume = next((v for v in pod.get("volumes", []) if mount and v.get("name") == mount["name"]), {})
    cm = config_maps.get((gw["metadata"].get("namespace"), volume.get("configMap", {}).get("name")))
    return path, (cm or {}).get("data", {}).get(os.path.basename(path))


def inclusion_prefixes(gw):
    annotations = gw["spec"]["template"].get("metadata", {}).get("annotations", {})
    proxy_config = yaml.safe_load(annotations.get("proxy.istio.io/config", "")) or {}
    return (proxy_config.get("proxyStatsMatcher") or {}).get("inclusionPrefixes", [])


def gateway_problems(where, gw, host_env, config_maps, source):
    proxy = istio_proxy(gw)
    if proxy is None:
        return [f"{where}: no istio-proxy container to hand the filter its environment"]
    out, env = [], {e["name"]: e for e in proxy.get("env", [])}
    for name in host_env:
        if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
            out.append(f"{where}: istio-proxy env {name} (vmConfig.env, HOST) must come from a Secret")
    path, text = bootstrap_override(gw, proxy, config_maps)
    if text is None:
        out.append(f"{where}: ISTIO_BOOTSTRAP_OVERRIDE {path!r} is no file of a mounted ConfigMap")
    elif (yaml.safe_load(text) or {}).get("stats_config") != source:
        out.append(f"{where}: the bootstrap override's stats_config differs from envoy/stats/tags.yaml")
    if not any(STAT_PREFIX.startswith(p) for p in inclusion_prefixes(gw)):
        out.append(f"{where}: proxy.istio.io/config proxyStatsMatcher.inclusionPrefixes must keep {STAT_PREFIX}*")
    return out


def mesh_stats(docs_by_kind):
    """What tests/mesh_stats.rs starts Envoy with: the Istio gateway's bootstrap override and
    stats inclusion prefixes, and the EnvoyProxy's bootstrap merge."""
    config_maps = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
                   for _, d in docs_by_kind.get("ConfigMap", [])}
    gateways = [gw for _, _, gws in wasm_plugin_gateways(docs_by_kind) for _, gw in gws]
    proxies = [d for _, d in docs_by_kind.get("EnvoyProxy", [])]
    return {
        "istio": [{"bootstrap_override": bootstrap_override(gw, istio_proxy(gw), config_maps)[1],
                   "inclusion_prefixes": inclusion_prefixes(gw)} for gw in gateways],
        "envoy_gateway": [{"bootstrap_merge": p["spec"]["bootstrap"]["value"]} for p in proxies],
    }


def main():
    root = ROOT
    if "--root" in sys.argv:
        root = sys.argv[sys.argv.index("--root") + 1]
    files = sorted(f for d in MANIFEST_DIRS for f in glob.glob(os.path.join(root, "envoy", d, "*.yaml")))
    problems, configs, docs = [], [], []
    docs_by_kind = {}
    for path in files:
        rel = os.path.relpath(path, root)
        with open(path) as f:
            try:
                loaded = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                problems.append(f"{rel}: not YAML: {e}")
                continue
        for i, doc in enumerate(loaded):
            if not isinstance(doc, dict):
                problems.append(f"{rel}[{i}]: not a Kubernetes object")
                continue
            where = f"{rel}[{i}] {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            docs.append((where, doc))
            docs_by_kind.setdefault(doc.get("kind"), []).append((where, doc))
            if doc.get("kind") == "WasmPlugin":
                configs.append({"source": where, "config": doc["spec"].get("pluginConfig")})
            if doc.get("kind") == "EnvoyExtensionPolicy":
                for w in doc["spec"].get("wasm", []):
                    configs.append({"source": where, "config": w.get("config")})
    # The semantic checks read fields the schema check vouches for, so they run only after it.
    problems += schema_problems(docs)
    if not problems:
        for where, doc in docs:
            problems += problems_of(doc, where)
    if not problems:
        problems += cross_checks(docs_by_kind) + stats_problems(root, docs_by_kind)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if "--plugin-configs" in sys.argv:
        print(json.dumps(configs))
    elif "--mesh-stats" in sys.argv:
        print(json.dumps(mesh_stats(docs_by_kind)))
    else:
        for path in files:
            print(f"checked: {os.path.relpath(path, root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
