"""This machine as the run will use it: the GPUs torch sees (it is what generates), host RAM, cores."""

from __future__ import annotations

from diffspec.machine import Gpu, Machine, cpu_count, ram_gb


def torch_machine() -> Machine:
    import torch

    gpus: list[Gpu] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(Gpu(i, str(props.name), props.total_memory / 2**30))
    return Machine(tuple(gpus), ram_gb(), cpu_count(), "torch" if gpus else "none")
