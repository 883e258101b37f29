"""Schemathesis hooks for tests/openapi.rs: what docs/openapi.yaml states but JSON Schema cannot.

Loaded through SCHEMATHESIS_HOOKS. Keep it to rules of the contract (docs/behaviour.md); accepted
deviations go to baseline.json, with their reason.
"""

import json
import pathlib
import re

import schemathesis
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
# The configured api_versions, as the document lists them.
VERSIONS = DOC["components"]["parameters"]["version"]["schema"]["enum"]
XID = re.compile(r"^[0-9a-v]{20}$")


def _filter_config(node):
    """The otp-filter's JSON configuration inside an Envoy YAML."""
    if isinstance(node, dict):
        value = node.get("value")
        if isinstance(value, str) and '"api_versions"' in value:
            return json.loads(value)
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found = _filter_config(child)
            if found is not None:
                return found
    return None


def _check_document_matches_demo_config():
    """The document describes envoy/envoy.yaml: refuse to test it once the two have drifted."""
    config = _filter_config(yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text()))
    if config["api_versions"] != VERSIONS:
        raise ValueError(f"api_versions: the document has {VERSIONS}, envoy.yaml {config['api_versions']}")
    documented = sorted(
        (method.upper(), path.split("{")[0])
        for path, item in DOC["paths"].items()
        for method, operation in item.items()
        if "gates" in operation.get("tags", [])
    )
    configured = sorted((gate["method"], gate["path"]) for gate in config["gates"])
    if documented != configured:
        raise ValueError(f"gates: the document has {documented}, envoy.yaml {configured}")


_check_document_matches_demo_config()


@schemathesis.hook
def filter_case(context, case):
    """Send only requests whose `version` is one of the configured versions, in negative cases too.

    Any other version is not one of the filter's routes: Envoy routes it past the filter to the
    upstream (in the demo a stand-in 404 without `Request-Id`), which this document does not
    describe. A baseline entry cannot accept that answer without also accepting the same
    violation from the filter's own 404, so such requests are not sent at all.
    """
    version = (case.path_parameters or {}).get("version")
    return version is None or version in VERSIONS


def _header(response, name):
    values = response.headers.get(name.lower()) or []
    return values[0] if values else None


def _answered_by_filter(case, response):
    """False for the answers this document leaves to others: the upstream's, after a gate let the
    request through (the demo's stand-ins mark theirs with `x-demo-upstream`), and whatever
    answers another method on a gate's path (the upstream, or Envoy itself: 400 for QUERY)."""
    if _header(response, "x-demo-upstream") is not None:
        return False
    gate = "gates" in (case.operation.definition.raw.get("tags") or [])
    return not (gate and response.request.method != case.operation.method.upper())


@schemathesis.check
def error_id_is_request_id(ctx, response, case):
    """Every error the filter sends has one error object whose `id` is the `Request-Id` header."""
    if not _answered_by_filter(case, response):
        return None
    if not (_header(response, "content-type") or "").startswith("application/vnd.api+json"):
        return None
    request_id = _header(response, "request-id")
    ids = [error.get("id") for error in json.loads(response.content)["errors"]]
    if ids != [request_id]:
        raise AssertionError(f"error ids {ids} differ from Request-Id {request_id!r}")
    return None


@schemathesis.check
def valid_request_id_is_echoed(ctx, response, case):
    """A valid inbound `Request-Id` (an xid, as in the document's example) is kept."""
    if not _answered_by_filter(case, response):
        return None
    sent = (case.headers or {}).get("Request-Id")
    got = _header(response, "request-id")
    if isinstance(sent, str) and XID.match(sent) and got != sent:
        raise AssertionError(f"Request-Id {sent!r} was not echoed (got {got!r})")
    return None
