"""Generate the CustomResourceDefinitions in `crds/` from the pydantic models.

`python -m trunk_operator.core.crdgen crds/` rewrites them; a unit test fails when the checked-in
files differ from what the models generate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from trunk_operator.core.models import (
    GROUP,
    VERSION,
    DIDSegmentSpec,
    DIDSegmentStatus,
    TwilioAccountSpec,
    TwilioAccountStatus,
    TwilioTrunkSpec,
    TwilioTrunkStatus,
)

CATEGORY = "asterisk"


class _DefaultsFromFactories(GenerateJsonSchema):
    """Put `default_factory` values into the schema so the API server applies them too."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            value = schema["default_factory"]()  # type: ignore[call-arg]
            # A nested object defaults to {} and the API server fills in its own defaults.
            return {} if isinstance(value, BaseModel) else value
        return schema.get("default", NoDefault)


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON schema into a Kubernetes structural schema."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        # Optional[X] is anyOf [X, null]: the field is simply optional in the API.
        choices = [c for c in node["anyOf"] if c.get("type") != "null"]
        if len(choices) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                del rest["default"]
            return _structural({**choices[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = _structural(value, defs)
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, schema_generator=_DefaultsFromFactories)
    return _structural(raw, raw.get("$defs", {}))


def _ready(column: str) -> str:
    return f'.status.conditions[?(@.type=="Ready")].{column}'


MAX_NAME = 63


def crd(
    kind: str,
    plural: str,
    short_names: list[str],
    spec: type[BaseModel],
    status: type[BaseModel],
    extra_columns: list[dict[str, Any]],
) -> dict[str, Any]:
    columns = [
        {"name": "Ready", "type": "string", "jsonPath": _ready("status")},
        {"name": "Reason", "type": "string", "jsonPath": _ready("reason")},
        *extra_columns,
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": columns,
        "schema": {"openAPIV3Schema": _root_schema(spec, status)},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


def _root_schema(spec: type[BaseModel], status: type[BaseModel]) -> dict[str, Any]:
    """The whole object's schema: the spec and status from the models, and the name's rule."""
    return {
        "type": "object",
        "description": spec.__doc__ or "",
        "required": ["spec"],
        # The name becomes a label value of the rendered ConfigMaps and Secrets (63 characters
        # at most) and part of file names.
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {MAX_NAME}",
                "message": f"metadata.name: at most {MAX_NAME} characters"
                " (it labels the rendered ConfigMaps and Secrets)",
            }
        ],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec),
            "status": openapi_schema(status),
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD."""
    return {
        "twiliotrunks.yaml": crd(
            "TwilioTrunk",
            "twiliotrunks",
            ["tt", "trunk"],
            TwilioTrunkSpec,
            TwilioTrunkStatus,
            [
                {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
                {"name": "State", "type": "string", "jsonPath": ".status.endpointState"},
                {"name": "DIDs", "type": "integer", "jsonPath": ".status.didCount"},
            ],
        ),
        "didsegments.yaml": crd(
            "DIDSegment",
            "didsegments",
            ["dids", "seg"],
            DIDSegmentSpec,
            DIDSegmentStatus,
            [
                {"name": "Trunk", "type": "string", "jsonPath": ".spec.trunkRef.name"},
                {"name": "DIDs", "type": "integer", "jsonPath": ".status.didCount"},
            ],
        ),
        "twilioaccounts.yaml": crd(
            "TwilioAccount",
            "twilioaccounts",
            ["twa"],
            TwilioAccountSpec,
            TwilioAccountStatus,
            [
                {"name": "Account", "type": "string", "jsonPath": ".spec.accountSid"},
                {"name": "Trunks", "type": "integer", "jsonPath": ".status.trunks"},
            ],
        ),
    }


def dump(document: dict[str, Any]) -> str:
    header = (
        "# Generated by `python -m trunk_operator.core.crdgen crds/` from models.py. Do not edit.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    target = Path((argv or sys.argv[1:] or ["crds"])[0])
    target.mkdir(parents=True, exist_ok=True)
    for name, document in all_crds().items():
        (target / name).write_text(dump(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
