"""Content hashes of local files and folders (model folders, LoRA and embedding files, input
images), so a fingerprint changes when the bytes that make the pixels change, not when a path does.

Hashing a 2 GB model folder on every `plan` would make planning slow, so each file's sha256 is
cached by (absolute path, size, mtime_ns, ctime_ns, inode): any write to the file changes its
ctime (even a `cp -p` that keeps the size and the mtime), a replacement by rename changes its
inode, and then the file is read again. The cache lives in memory for the process and in one JSON
file in the user's cache folder (`$DIFFSPEC_CACHE_DIR`, else `$XDG_CACHE_HOME/diffspec`, else
`~/.cache/diffspec`), written atomically; never under the output root, because `plan` writes
nothing there. The file is only a speed-up: unreadable, corrupt or unwritable, it is ignored and
everything is hashed again.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from diffspec.atomic import atomic_write_bytes

CACHE_NAME = "content-hashes.json"
FORMAT = "diffspec-content-cache/1"
MAX_ENTRIES = 200_000
# What a model folder's identity covers: weights, configs, tokenizers and remote code. Not
# READMEs, licences or hidden files (.git, .cache), which change no pixel.
MODEL_FILES = frozenset(
    {
        ".safetensors",
        ".bin",
        ".ckpt",
        ".pt",
        ".pth",
        ".gguf",
        ".onnx",
        ".msgpack",
        ".h5",
        ".json",
        ".txt",
        ".model",
        ".yaml",
        ".yml",
        ".py",
        ".tiktoken",
    }
)


def cache_dir() -> Path:
    explicit = os.environ.get("DIFFSPEC_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "diffspec"


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class ContentCache:
    """sha256 of files by (path, stamp); folders as the hash of their files' hashes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, list[Any]] = {}  # abs path -> [size, mtime_ns, ctime_ns, ino, sha256]
        self._dirty = False
        self._lock = threading.Lock()
        self.files_hashed = 0  # files actually read, for tests and benchmarks
        if path is not None:
            self._entries = _read(path)

    def file_sha256(self, path: Path) -> str:
        path = Path(os.path.abspath(path))
        stat = path.stat()
        stamp = _stamp(stat)
        key = str(path)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[:4] == stamp:
                return str(hit[4])
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
        after = _stamp(path.stat())
        with self._lock:
            self.files_hashed += 1
            if after == stamp:  # not written to while we read it: safe to remember
                self._entries[key] = [*stamp, sha]
                self._dirty = True
        return sha

    def folder_sha256(self, folder: Path) -> str:
        """sha256 of the sorted [relative path, size, sha256] of the folder's model files."""
        folder = Path(os.path.abspath(folder))
        listing = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in MODEL_FILES:
                    continue
                path = Path(dirpath) / name
                if not path.is_file():
                    continue
                listing.append([path.relative_to(folder).as_posix(), path.stat().st_size, self.file_sha256(path)])
        listing.sort()
        return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode("utf-8")).hexdigest()

    def sha256(self, path: Path) -> str:
        """A file's hash, or a folder's (prefixed, so a file and a folder never collide)."""
        return "dir:" + self.folder_sha256(path) if Path(path).is_dir() else self.file_sha256(path)

    def flush(self) -> None:
        """Persist new entries, merged with what another process may have written meanwhile."""
        with self._lock:
            if not self._dirty or self.path is None:
                return
            merged = _read(self.path)
            merged.update(self._entries)
            if len(merged) > MAX_ENTRIES:  # forget files that are gone, then the oldest-written
                merged = {k: v for k, v in merged.items() if os.path.exists(k)}
                merged = dict(list(merged.items())[-MAX_ENTRIES:])
            data = json.dumps({"format": FORMAT, "entries": merged}, separators=(",", ":")).encode("utf-8")
            try:
                atomic_write_bytes(self.path, data, durable=False)  # a lost cache only costs a rehash
            except OSError:
                self.path = None  # read-only home or full disk: keep hashing in memory
                return
            self._entries = merged
            self._dirty = False


def _read(path: Path) -> dict[str, list[Any]]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return {k: v for k, v in data["entries"].items() if isinstance(v, list) and len(v) == 5}


_default: ContentCache | None = None
_default_lock = threading.Lock()


def default_cache() -> ContentCache:
    """The process's cache, backed by the file in `cache_dir()` (read once, flushed at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ContentCache(cache_dir() / CACHE_NAME)
            atexit.register(_default.flush)
        return _default


def reset_default_cache() -> None:
    """Forget the process's cache (tests that change DIFFSPEC_CACHE_DIR or files' stamps)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.flush()
        _default = None
