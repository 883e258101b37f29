"""Schema checks of Kubernetes manifests against models generated from the real CRDs and the
Kubernetes OpenAPI, published on npm and pinned in tools/manifest-models/package-lock.json:

- `kubernetes-models` 5.1.0: Kubernetes v1.36.0 (core, apps, ...);
- `@kubernetes-models/istio` 3.0.1: Istio 1.29.2's CRDs (WasmPlugin, EnvoyFilter, DestinationRule, ...);
- `@kubernetes-models/envoy-gateway` 2.0.0: Envoy Gateway's v1alpha1 API (EnvoyExtensionPolicy, EnvoyProxy).

Each document becomes a TypeScript object literal typed with its model's interface (`IWasmPlugin`,
`IDeployment`, ...) and `tsc --noEmit` checks it. That is strict at every depth: an object literal
may only name the fields its type declares (a misspelled `vmConfig.env[].valueFrom` or container
`securityContext` field fails), enum fields take only their declared values, and types and required
fields are checked. Why types and not the packages' validate() functions: those are compiled JSON
schema validators that let unknown fields through (the CRDs do not say additionalProperties: false;
the API server prunes instead), and the packages declare Node.js 22 where the machine has 20. tsc
only reads the type declarations, so the Node.js version does not matter.

Not checked here: free-form fields (`pluginConfig`, EnvoyFilter patch values, EnvoyExtensionPolicy
wasm config are `{}` in the CRDs), string formats and patterns, and the CRDs' CEL rules.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "manifest-models")
TSC = os.path.join(MODELS, "node_modules", "typescript", "bin", "tsc")

# API group -> the package whose models cover it. Module paths follow `<package>/<apiVersion>/<Kind>`
# (core `v1` included), so every kind of these groups is checked without a list of kinds here.
PACKAGES = [
    (re.compile(r"(|apps|batch|policy|[a-z.]+\.k8s\.io)$"), "kubernetes-models"),
    (re.compile(r"[a-z.]+\.istio\.io$"), "@kubernetes-models/istio"),
    (re.compile(r"gateway\.envoyproxy\.io$"), "@kubernetes-models/envoy-gateway"),
]
TS_ERROR = re.compile(r"^(?P<file>[^(]+)\((?P<line>\d+),\d+\): error (?P<code>TS\d+): (?P<msg>.*)$")
UNKNOWN_FIELD = re.compile(r"known properties, (?:and|but) '\"?(?P<field>[^'\"]+)\"?' does not exist")


def model_module(api_version, kind):
    """The module and interface that model `api_version`/`kind`, or None for an unknown group."""
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    for pattern, package in PACKAGES:
        if pattern.match(group):
            return f"{package}/{api_version}/{kind}", f"I{kind}"
    return None


def literal_lines(value, path, prefix=""):
    """`value` as TypeScript literal lines, one member a line, each with its path: tsc reports the
    line of the member at fault, and the path names it in the message."""
    if isinstance(value, dict):
        yield prefix + "{", path
        for key, item in value.items():
            yield from literal_lines(item, path + [str(key)], json.dumps(str(key)) + ": ")
        yield "},", path
    elif isinstance(value, list):
        yield prefix + "[", path
        for i, item in enumerate(value):
            yield from literal_lines(item, path + [i])
        yield "],", path
    else:
        yield prefix + json.dumps(value, default=str) + ",", path


def dotted(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(document)"


def describe(code, msg):
    """The part of tsc's message a reader needs; the long type dumps are cut."""
    m = UNKNOWN_FIELD.search(msg)
    if m:
        return f"unknown field {m['field']!r}"
    msg = re.sub(r"'([^']{80})[^']+'", r"'\1…'", msg)
    return f"{msg} [{code}]"


def typescript(docs):
    """One TypeScript module that types each document with its model, and for each of its lines
    the documents (`where`) and the path it stands for (None for an import); plus the documents
    no package models."""
    problems, modules, typed = [], {}, []
    for where, doc in docs:
        module = model_module(str(doc.get("apiVersion", "")), str(doc.get("kind", "")))
        if module is None:
            problems.append(f"{where}: no model for apiVersion {doc.get('apiVersion')!r}")
            continue
        modules.setdefault(module, []).append(where)
        typed.append((where, doc, module))
    lines, origins = [], []
    alias = {}
    for i, ((path, name), users) in enumerate(modules.items()):
        alias[(path, name)] = f"M{i}"
        lines.append(f"import type {{ {name} as M{i} }} from {json.dumps(path)};")
        origins.append((users, None))
    for n, (where, doc, module) in enumerate(typed):
        body = list(literal_lines(doc, []))
        body[0] = (f"export const d{n}: {alias[module]} = " + body[0][0], body[0][1])
        body[-1] = ("};", body[-1][1])
        for text, path in body:
            lines.append(text)
            origins.append(([where], path))
    return lines, origins, problems


def tsc(lines):
    """tsc's output on `lines` as a strict ES module; the scratch directory lies inside
    tools/manifest-models so that the models resolve from its node_modules."""
    scratch = tempfile.mkdtemp(prefix=".check-", dir=MODELS)
    try:
        with open(os.path.join(scratch, "manifests.mts"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(scratch, "tsconfig.json"), "w") as f:
            json.dump({"compilerOptions": {
                "strict": True, "noEmit": True, "module": "nodenext", "moduleResolution": "nodenext",
                "target": "es2022", "skipLibCheck": True, "types": [],
            }, "files": ["manifests.mts"]}, f)
        return subprocess.run(["node", TSC, "-p", scratch, "--pretty", "false"],
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def schema_problems(docs):
    """Problems of `docs` [(where, doc)] against their models, or a setup problem."""
    if not os.path.exists(TSC):
        return ["manifest models are not installed: run `make validate` "
                "(npm ci in tools/manifest-models)"]
    lines, origins, problems = typescript(docs)
    if len(lines) == 0:
        return problems
    run, located = tsc(lines), 0
    for out_line in run.stdout.splitlines():
        m = TS_ERROR.match(out_line)
        if not m or not 0 < int(m["line"]) <= len(origins):
            continue
        located += 1
        users, path = origins[int(m["line"]) - 1]
        if path is None:  # an import: the package has no such model
            problems += [f"{w}: no model for this apiVersion/kind ({m['msg']})" for w in users]
        else:
            problems.append(f"{users[0]}: {dotted(path)}: {describe(m['code'], m['msg'])}")
    if run.returncode != 0 and not located:
        problems.append(f"tsc failed without a located error:\n{run.stdout}{run.stderr}")
    return problems
