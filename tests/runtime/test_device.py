from contextlib import nullcontext

import pytest
import torch

from chargpt.errors import ConfigError
from chargpt.runtime import device, distributed
from chargpt.runtime.device import autocast_for, detect_device, idle_threads, native_bf16, resolve_device, resolve_dtype


def test_auto_picks_an_available_device():
    assert resolve_device("auto").type == detect_device()
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "gpu", "", "cuda:-1", "meta", "cpu:0", "cuda:\u0663", "cuda:\uff11"])
def test_unknown_device_names_are_refused(name):
    """cuda:٣ (an Arabic-Indic digit, which `\\d` matches) reached torch.device: "Invalid device string"."""
    with pytest.raises(ConfigError, match="^--device must be auto, cpu, mps, cuda or cuda:N"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["cuda:99999999999999999999", "cuda:2147483648", "cuda:255", "cuda:128"])
def test_a_cuda_index_beyond_the_devices_here_is_one_clear_error_never_torchs(monkeypatch, name):
    """torch parses cuda:N itself into an 8-bit index: beyond 2^31 it raised "Could not parse device index", and
    cuda:255 became plain cuda (device 0), cuda:128 cuda:-128. The index is read by chargpt, against the devices
    here (one, as torch is told it has)."""
    with pytest.raises(ConfigError, match=f"^--device {name}: " + ("CUDA is not available" if not
                                                                    torch.cuda.is_available() else "only")):
        resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=f"^--device {name}: only 1 CUDA device\\(s\\) here, cuda:0 to cuda:0$"):
        resolve_device(name)
    assert resolve_device("cuda:0") == torch.device("cuda", 0) and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match="^device cuda:1: only 1"):  # the library names its argument
        resolve_device("cuda:1", spell=str)


def test_autocast_is_bf16_where_native_and_float32_elsewhere(monkeypatch):
    cpu = torch.device("cpu")
    native = bool(torch.cpu.get_capabilities().get("avx512_bf16") or torch.cpu.get_capabilities().get("amx_bf16"))
    assert native_bf16(cpu) == native
    assert (autocast_for(cpu) is nullcontext) == (not native)
    assert autocast_for(cpu, "float32") is nullcontext
    assert resolve_dtype(torch.device("mps")) == "float32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "avx2": True})
    assert resolve_dtype(cpu) == "float32" and autocast_for(cpu) is nullcontext  # emulated bf16 is slower
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert resolve_dtype(cpu) == "bfloat16"
    monkeypatch.undo()
    with autocast_for(torch.device("cpu"), "bfloat16")():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
    ctx = autocast_for(torch.device("cuda"))()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


def test_idle_threads_leave_out_the_cores_other_processes_keep_busy(monkeypatch):
    monkeypatch.setattr(distributed, "cpu_count", lambda: 8)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    for busy, threads in ((0.2, 8), (2.6, 5), (7.9, 1), (30.0, 1)):
        monkeypatch.setattr(device, "busy_cpus", lambda busy=busy: busy)
        assert idle_threads() == threads
    # without /proc/stat, the load average stands in
    monkeypatch.setattr(device, "busy_cpus", lambda: None)
    monkeypatch.setattr("os.getloadavg", lambda: (2.6, 2.6, 2.6))
    assert idle_threads() == 5
