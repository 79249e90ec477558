import re
import subprocess
import sys
from pathlib import Path


def test_two_process_ddp_fit_gets_equal_batches_and_finishes(tiny_data):
    script = Path(__file__).with_name("ddp_fit_script.py")
    res = subprocess.run([sys.executable, str(script), str(tiny_data)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-1000:] + res.stderr[-6000:]
    counts = re.findall(r"RANK (\d) EPOCH (\d) BATCHES (\d+)", res.stdout)
    assert len(counts) == 4
    per_epoch = {}
    for _rank, epoch, n in counts:
        per_epoch.setdefault(epoch, set()).add(int(n))
    assert all(len(v) == 1 and v != {0} for v in per_epoch.values()), counts
