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


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "gpu", ""])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ConfigError, match="--device"):
        resolve_device(name)


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
