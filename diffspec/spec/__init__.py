"""The spec language: pydantic models, YAML loading with positions, JSON Schema."""
