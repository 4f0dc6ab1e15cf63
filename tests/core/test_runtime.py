import subprocess
import sys

import pytest

from tests.conftest import REPO

CHURN = """
import resource, sys, torch
from lightning_modules.core.runtime import keep_freed_memory
from datamodules.degradation.pipelines import ClassicalDegradation
from datamodules.degradation.samplers import DIV2KRKKernelSampler
applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
deg, hr, g = ClassicalDegradation(2, DIV2KRKKernelSampler()), torch.rand(64, 3, 128, 128), torch.Generator()
faults = []
with torch.no_grad():
    for _ in range(3):
        deg(hr, g)
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        deg(hr, g)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sorted(faults)[len(faults) // 2])  # the median step: a one-off heap growth (~15 MB) is not a trend
"""


def faults_per_step(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=REPO, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator setting")
def test_keep_freed_memory_stops_page_faults_of_the_degradation_pipeline():
    applied, tuned = faults_per_step("tuned")
    _, default = faults_per_step("default")
    assert applied
    assert default > 1000  # the 15 MB padded batch is faulted in again on every call with glibc's defaults
    assert tuned < default / 10, (tuned, default)
