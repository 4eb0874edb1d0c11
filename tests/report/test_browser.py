"""The report renders in a real browser: headless Chromium (Debian package, installed by .ci/run) loads the page
offline, the DOM has the plots and tables, the screenshot is not blank, and the console shows no errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

import snpsim
from snpsim.report import build
from snpsim.results import save

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    out = tmp_path / "out"
    scenario = {
        "seed": 4,
        "duration": "1100ms",
        "samples": 5,
        "host": {"memory": "1G", "page_cache": 0.3},
        "vms": [{"memory": "64M", "vcpus": 1, "workload": "random-conversion"}],
    }
    for name in ("fixup", "upstream"):
        save(snpsim.run({**scenario, "policy": name}), out, name)
    page = build(out)
    url = page.resolve().as_uri()

    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 4
    assert 'id="metrics"' in dom.stdout or "id='metrics'" in dom.stdout
    assert "directmap_4k" in dom.stdout

    shot = tmp_path / "shot.png"
    run = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", url)
    assert shot.exists(), run.stderr[-2000:]
    image = mpimg.imread(shot)
    assert image.shape[0] >= 1000 and image.shape[1] >= 1000
    gray = image[..., :3].mean(axis=2)
    assert gray.std() > 0.05  # not blank: plots and text give contrast
    assert np.count_nonzero(gray < 0.5) > 5000  # a good amount of dark ink (axes, text, bars)
    console = [line for line in run.stderr.splitlines() + dom.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "rror" in line], console
