"""uniformface.base.devices: a device name is checked against this machine, with the fix in the message."""
import pytest
import torch

from uniformface.base.devices import resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"--device 'gpu0': not a device name \(use cpu, cuda"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match=r"--device meta: unsupported device type .meta."):
        resolve_device("meta")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == torch.device("cuda:0")
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError, match=r"--device cuda: no CUDA GPU .* \(use --device cpu\)"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match=r"config key 'device' cuda: .*\(use --set device=cpu\)"):
            resolve_device("cuda", option="config key 'device'", use="--set device={}")
