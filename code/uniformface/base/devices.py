"""The one check of a device name against this machine: `resolve_device("cuda:1")` is a torch.device that
exists here, or a ValueError naming the device and the fix (docs/RELIABILITY.md)."""
from __future__ import annotations

AUTO = "auto"  # CUDA when this PyTorch sees a GPU, else the CPU (the config key `device` has it too)


def resolve_device(text: str, option: str = "--device", use: str | None = None):
    """A torch.device that exists on this machine, or ValueError naming it and the fix (an unknown name,
    CUDA without a GPU, cuda:N beyond the GPUs there are, MPS unavailable). `auto` is cuda when a GPU is
    available, else cpu. `option` names where the device came from, `use` how to give another one ("{}"
    is replaced by the device; default: option)."""
    import torch  # here, not at import: a command's --help and argument checks need no torch

    use = use or f"{option} {{}}"
    if text == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{option} {text!r}: not a device name (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {text}: no CUDA GPU is available to this PyTorch (use {use.format('cpu')})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{option} {text}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1} (use one of them, or {use.format('cpu')})")
    elif device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ValueError(f"{option} {text}: MPS is not available on this machine (use {use.format('cpu')})")
    elif device.type != "cpu":
        raise ValueError(f"{option} {text}: unsupported device type {device.type!r} (use cpu or cuda)")
    return device
