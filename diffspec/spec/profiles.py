"""Profiles: named overlays merged onto the spec's data before validation (`--profile`)."""

from __future__ import annotations

import copy
from typing import Any

from diffspec.errors import Problem, SpecError
from diffspec.spec.suggest import did_you_mean
from diffspec.spec.yamlio import Positions

PROFILE_ONLY_KEY = "only"


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_profile(data: dict[str, Any], positions: Positions, profile: str | None) -> dict[str, Any]:
    profiles = data.get("profiles") or {}
    if profile is None:
        return data
    if not isinstance(profiles, dict) or profile not in profiles:
        names = list(profiles) if isinstance(profiles, dict) else []
        raise SpecError(
            [
                Problem(
                    positions.at(("profiles",)),
                    f"unknown profile {profile!r}{did_you_mean(profile, names)}"
                    + (f" (profiles: {', '.join(names)})" if names else " (this spec defines no profiles)"),
                )
            ]
        )
    overlay = profiles[profile]
    if not isinstance(overlay, dict):
        raise SpecError([Problem(positions.at(("profiles", profile)), f"profile {profile!r} must be a mapping")])
    overlay = dict(overlay)
    only = overlay.pop(PROFILE_ONLY_KEY, None)
    forbidden = [k for k in overlay if k in ("version", "dataset", "profiles")]
    if forbidden:
        raise SpecError(
            [Problem(positions.at(("profiles", profile, forbidden[0])), f"a profile cannot change `{forbidden[0]}`")]
        )
    merged = _deep_merge(data, overlay)
    positions.graft(positions, ("profiles", profile), ())
    if only is not None:
        classes = merged.get("classes") or {}
        wanted = [only] if isinstance(only, str) else list(only) if isinstance(only, list) else []
        missing = [c for c in wanted if c not in classes]
        if missing or not wanted:
            raise SpecError(
                [
                    Problem(
                        positions.at(("profiles", profile, PROFILE_ONLY_KEY)),
                        f"`only` must list classes of this spec; unknown: {', '.join(map(str, missing)) or only!r}"
                        + (did_you_mean(str(missing[0]), classes) if missing else ""),
                    )
                ]
            )
        merged["classes"] = {k: v for k, v in classes.items() if k in wanted}
    return merged
