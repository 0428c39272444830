import subprocess
import sys
import time

import pytest
import torch

from chargpt.runtime.resources import busy_cpus, keep_freed_memory_for_reuse


def test_freed_tensor_memory_is_kept_for_reuse_on_linux_cpus_only():
    applied = keep_freed_memory_for_reuse(torch.device("cpu"))
    assert applied == sys.platform.startswith("linux")  # glibc's mallopt took both settings
    assert keep_freed_memory_for_reuse(torch.device("cuda")) is False
    assert keep_freed_memory_for_reuse(torch.device("mps")) is False


def test_busy_cpus_sees_a_process_spinning_now_and_not_one_that_has_ended():
    if busy_cpus() is None:
        pytest.skip("no /proc/stat here")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        during = busy_cpus(window=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert during >= 0.8  # one whole CPU at least (other tests may add to it, never take from it)
