"""Offline validation of custom resources (Kueue, Kubeflow Trainer) against their CRDs' openAPIV3Schema,
as the API server validates them on `kubectl apply` (the CRDs are in ../shared/crds, unchanged).

jsonschema checks types, enums, required fields, patterns, min/max and, as the API server's strict field
validation does (kubectl's default), unknown fields: every object schema that lists its `properties` gets
`additionalProperties: false` here. The Kubernetes extensions are handled so:
- `x-kubernetes-int-or-string`: an integer or a string;
- `x-kubernetes-preserve-unknown-fields` and `x-kubernetes-embedded-resource`: unknown fields allowed
  (none of these CRDs use them today);
- `metadata`: the CRDs say only `type: object`; it is checked against the few ObjectMeta fields a
  manifest sets (name, namespace, labels, annotations), so a misspelt `lables` fails too.
Not checked (the API server checks them, this cannot): `x-kubernetes-validations` (CEL rules, e.g.
"numProcPerNode must be greater than or equal to 1", immutability), `x-kubernetes-list-type` map/set
uniqueness, `format` (int32, date-time) and defaults. The webhooks of Kueue and the Trainer (admission
checks such as "the runtime exists") are not run either.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from support.kube import ROOT

CRDS = ROOT.parent / "shared" / "crds"

_OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "generateName": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def schemas(folder: Path = CRDS) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the strict JSON schema of every served version of every CRD in `folder`."""
    found = {}
    for path in sorted(folder.glob("*/*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    schema["properties"]["metadata"] = _OBJECT_META
                    found[(f"{group}/{version['name']}", kind)] = schema
    return found


def strict(schema: dict) -> dict:
    """A copy of an OpenAPI v3 schema that jsonschema checks as the API server would (see the module doc)."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if node.pop("x-kubernetes-int-or-string", False):
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        open_ended = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource")
        if "properties" in node and "additionalProperties" not in node and not open_ended:
            node["additionalProperties"] = False
        children = list(node.get("properties", {}).values()) + node.get("anyOf", []) + node.get("allOf", []) + node.get("oneOf", [])
        children += [node[key] for key in ("items", "additionalProperties") if isinstance(node.get(key), dict)]
        for child in children:
            walk(child)

    walk(schema)
    return schema


def errors(document: dict, known: dict[tuple[str, str], dict]) -> list[str]:
    """Every schema error of one custom resource, as 'Kind/name: path: message' lines."""
    key = (document.get("apiVersion"), document.get("kind"))
    name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
    if key not in known:
        return [f"{name}: no CRD in {CRDS} serves {key[0]} {key[1]}"]
    validator = jsonschema.Draft4Validator(known[key])
    return [
        f"{name}: {'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def is_custom(document: dict) -> bool:
    """A kind of Kueue or Kubeflow Trainer (validated here), not one built into Kubernetes."""
    return document.get("apiVersion", "").split("/")[0].endswith((".x-k8s.io", ".kubeflow.org"))
