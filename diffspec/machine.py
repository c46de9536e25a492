"""What this machine offers a run: GPUs with their memory, host memory, cores. No torch.

`plan` describes the machine it plans for (so a plan made in CI on a CPU says so), and
`apply` compares the machine it runs on with the plan before any work. Both use the same
:class:`Machine` record. Here the GPUs are read from ``nvidia-smi`` when it exists, which
costs no CUDA context and no torch import; `diffspec.run.machine` asks torch itself, which is
what the run will use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

#: The share of a device's memory a plan may use when the spec gives no budget: the rest is
#: the CUDA context, the allocator's fragmentation, the desktop (GPU) or everything else (RAM).
GPU_USABLE_SHARE = 0.9
RAM_USABLE_SHARE = 0.75


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    memory_gb: float


@dataclass(frozen=True, slots=True)
class Machine:
    gpus: tuple[Gpu, ...]
    ram_gb: float
    cpus: int
    probe: str  # how the GPUs were found: nvidia-smi, torch, none, or a test's fake

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def gpu_memory_gb(self, indices: tuple[int, ...] | None = None) -> float | None:
        """The smallest memory among the GPUs a run would use (all of them by default)."""
        chosen = [g for g in self.gpus if indices is None or g.index in indices]
        return min(g.memory_gb for g in chosen) if chosen else None

    def describe(self) -> str:
        if self.gpus:
            kinds = sorted({f"{g.name} ({g.memory_gb:.0f} GB)" for g in self.gpus})
            return f"{len(self.gpus)} CUDA GPU{'s' if len(self.gpus) != 1 else ''}: {', '.join(kinds)}"
        return f"CPU only ({self.cpus} cores, {self.ram_gb:.0f} GB RAM)"


def ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8.0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _nvidia_smi_gpus() -> tuple[Gpu, ...] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            try:
                gpus.append(Gpu(int(parts[0]), parts[1], float(parts[2]) / 1024))
            except ValueError:
                continue
    return tuple(gpus)


def probe_machine() -> Machine:
    """This machine, without importing torch. CUDA_VISIBLE_DEVICES="" hides the GPUs, as torch would."""
    gpus: tuple[Gpu, ...] = ()
    probe = "none"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible != "":
        found = _nvidia_smi_gpus()
        if found:
            gpus, probe = _visible(found, visible), "nvidia-smi"
    return Machine(gpus, ram_gb(), cpu_count(), probe)


def _visible(gpus: tuple[Gpu, ...], visible: str | None) -> tuple[Gpu, ...]:
    """The GPUs CUDA_VISIBLE_DEVICES lets a process see, renumbered from 0 as CUDA does."""
    if not visible:
        return gpus
    try:
        wanted = [int(v) for v in visible.split(",") if v.strip()]
    except ValueError:  # UUIDs: leave the numbering to torch at apply
        return gpus
    by_index = {g.index: g for g in gpus}
    return tuple(Gpu(i, by_index[w].name, by_index[w].memory_gb) for i, w in enumerate(wanted) if w in by_index)
