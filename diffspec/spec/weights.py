"""Refuse, at validate time, local model folders that would run code when loaded.

Pickle weights (``.bin``, ``.pt``, ``.ckpt``...) execute code when unpickled, and a model that
ships Python (a custom pipeline or component, a transformers ``auto_map``) runs it when
``trust_remote_code`` is on. Both are refused unless the spec opts in with the key the message
names (``use_safetensors: false``, ``trust_remote_code: true``). For a local folder this is a
cheap file listing (no torch), so the refusal comes with a position, before any plan; hub ids
are checked by ``from_pretrained`` itself at load time (``use_safetensors=True`` and
``trust_remote_code=False`` are passed unless the spec opts in).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffspec.errors import Problem
from diffspec.spec.yamlio import PathT, Positions

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
SAFE_SUFFIXES = {".safetensors", ".gguf"}
LIBRARIES = {"diffusers", "transformers", None}
_MAX_FILES = 5000  # a listing, not a crawl: a folder this big is not a model folder


def _files(folder: Path) -> list[Path]:
    """The folder's files and those one level down (diffusers' component folders)."""
    out: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            out.append(entry)
        elif entry.is_dir():
            out.extend(sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")))
        if len(out) > _MAX_FILES:
            break
    return out


def _pickle_only(files: list[Path], base: Path) -> list[str]:
    """Folders (relative to ``base``) whose weights are all pickle."""
    by_folder: dict[Path, set[str]] = {}
    for f in files:
        if f.suffix.lower() in PICKLE_SUFFIXES | SAFE_SUFFIXES:
            by_folder.setdefault(f.parent, set()).add(f.suffix.lower())
    return [
        str(folder.relative_to(base)) if folder != base else "."
        for folder, kinds in by_folder.items()
        if not kinds & SAFE_SUFFIXES
    ]


def _ships_code(files: list[Path]) -> str | None:
    for f in files:
        if f.suffix == ".py":
            return f"it ships Python code ({f.name})"
        if f.suffix == ".json" and f.stat().st_size < 1_000_000:
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            if "auto_map" in data:
                return f"{f.name} maps to custom code (auto_map)"
            if f.name == "model_index.json":
                for key, value in data.items():
                    if (
                        isinstance(value, list)
                        and len(value) == 2
                        and not key.startswith("_")
                        and value[0] not in LIBRARIES
                    ):
                        return f"model_index.json loads {key} from the module {value[0]!r}"
    return None


def _weights_problem(source: str, root: Path, opt_in: str) -> str | None:
    local = (root / source).expanduser()
    if source.startswith("builtin:") or not local.exists():
        return None  # a hub id: from_pretrained enforces use_safetensors at load time
    if local.is_file():
        if local.suffix.lower() in PICKLE_SUFFIXES:
            return f"{source!r} is a pickle file ({local.suffix}), which runs code when loaded; use .safetensors or set `{opt_in}`"
        return None
    files = _files(local)
    bad = _pickle_only(files, local)
    if bad:
        shown = ", ".join(f"{b}/" for b in bad[:3])
        return (
            f"folder {source!r} holds only pickle (.bin) weights in {shown}, which run code when loaded; "
            f"convert them to safetensors or set `{opt_in}` to load them anyway"
        )
    return None


def model_problems(spec: Any, root: Path, positions: Positions) -> list[Problem]:
    problems: list[Problem] = []
    for name, model in spec.models.items():
        mpath: PathT = ("models", name)
        opt_in = f"use_safetensors: false` in models.{name}"  # the message opens the backquote
        if model.use_safetensors:
            for key, source in (("source", model.source), ("controlnet", model.controlnet)):
                why = _weights_problem(source, root, opt_in) if source else None
                if why:
                    problems.append(Problem(positions.at(mpath + (key,)), f"model {name!r}: {why}"))
            for kind, items in (("loras", model.loras), ("embeddings", model.embeddings)):
                for i, item in enumerate(items):
                    why = _weights_problem(item.source, root, opt_in)
                    if why:
                        problems.append(
                            Problem(positions.at(mpath + (kind, i, "source")), f"model {name!r} {kind[:-1]} {i}: {why}")
                        )
        local = (root / model.source).expanduser()
        if not model.trust_remote_code and not model.source.startswith("builtin:") and local.is_dir():
            code = _ships_code(_files(local))
            if code:
                problems.append(
                    Problem(
                        positions.at(mpath + ("source",)),
                        f"model {name!r}: {code}; diffspec runs no code from a model unless you set "
                        f"`trust_remote_code: true` in models.{name}",
                    )
                )
    return problems
