"""The report renders in a real browser: headless Chromium (Debian package, installed by .ci/run) loads the page
offline, the DOM has the plots, the memory pictures and the tables, the pictures are drawn (their pixels reach the
screenshot), the screenshot is not blank, and the console shows no errors."""

from __future__ import annotations

import re
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
        "host": {"memory": "1G", "page_cache": 0.3, "layout": "flat"},
        "vms": [{"memory": "64M", "vcpus": 1, "workload": "random-conversion"}],
    }
    for name in ("fixup", "upstream"):  # fixup: 1G direct map throughout; upstream: split to 4K
        save(snpsim.run({**scenario, "policy": name}), out, name)
    page = build(out)
    url = page.resolve().as_uri()

    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # direct map, guest memory, RMP/NPT activity, NPT levels, faults (fixup: RMP faults and #VC), final counts,
    # boot time (the 64M guest boots within the 1.1 s)
    assert dom.stdout.count("<svg") == 7
    assert 'id="metrics"' in dom.stdout or "id='metrics'" in dom.stdout
    assert "directmap_4k" in dom.stdout
    # two presets, three moments, memory and direct map
    assert dom.stdout.count("<img ") == 12 and dom.stdout.count("data:image/png;base64,") == 12

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


def test_memory_pictures_reach_the_screen(tmp_path: Path) -> None:
    """The pictures alone (the plots cut out of the page): fixup keeps the boot direct map, one 1G mapping for the
    whole 1 GiB host, except where its #PF handler splits around a host SNP page it cannot make shared (a VMSA,
    a firmware page: 1G -> 2M, one 2M range -> 4K; docs/launch.md), so each of its three direct-map pictures is
    512 blocks of 3x3 px in the 1G, 2M or 4K colour (report.LEVEL_COLORS), at most one of them 4K."""
    out = tmp_path / "out"
    scenario = {
        "seed": 4,
        "duration": "300ms",
        "samples": 4,  # pictures at rows 1 and samples // 2 = 2, and at the end: three
        "host": {"memory": "1G", "layout": "flat"},  # no e820 holes: one 1G direct-map entry at boot
        "vms": [{"memory": "64M", "vcpus": 1, "workload": "linux-boot"}],
        "policy": "fixup",
    }
    save(snpsim.run(scenario), out, "fixup")
    page = build(out).read_text()
    pictures = tmp_path / "pictures.html"
    pictures.write_text(re.sub(r"<svg.*?</svg>", "", page, flags=re.S))
    shot = tmp_path / "pictures.png"
    run = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", pictures.resolve().as_uri())
    assert shot.exists(), run.stderr[-2000:]
    image = mpimg.imread(shot)[..., :3]

    def colour(rgb: tuple[int, int, int]) -> np.ndarray:
        return np.all(np.abs(image - np.array(rgb) / 255) < 0.01, axis=2)

    green, orange, red = colour((0x2C, 0xA0, 0x2C)), colour((0xFF, 0x7F, 0x0E)), colour((0xD6, 0x27, 0x28))
    legend_swatch = 20 * 20
    levels = np.count_nonzero(green | orange | red)
    assert 3 * 512 * 9 <= levels <= 3 * 512 * 9 + 3 * legend_swatch
    assert np.count_nonzero(red) <= 3 * 9 + legend_swatch
