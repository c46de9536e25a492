"""The JSON Schema of the spec language, for editors (yaml-language-server) and CI."""

from __future__ import annotations

import json
from typing import Any

from diffspec.spec.model import Spec

SCHEMA_ID = "https://diffspec.dev/schema/spec-v1.json"


def spec_json_schema() -> dict[str, Any]:
    schema = Spec.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "diffspec dataset spec"
    return schema


def spec_json_schema_text() -> str:
    return json.dumps(spec_json_schema(), indent=2, sort_keys=True) + "\n"
