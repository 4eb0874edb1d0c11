"""Host scale: state per untouched frame, a 256 GiB guest boot, and a 2 TiB host with 64 VMs churning for a month.

Run: ``python benchmarks/bench_scale.py [boot|host|month] [DURATION | GUEST_GIB] [--engine fast|reference]``
(default: all three, on the default engine; ``boot 16``
boots a 16 GiB guest instead, for issue 17's ratio; the month's duration can be shortened, e.g. ``month 1d``, to
extrapolate on a slow machine). Each part runs in a fresh process so its peak resident
memory (``ru_maxrss``) is its own. Targets (issue 7):

- state <= 4 bytes per untouched host 4K frame (a 2 TiB host with no VM: resident memory above the interpreter's
  baseline, divided by 2^29 frames);
- a 256 GiB, 64-vCPU guest boot with full pre-validation (the guest does not call ``AllowUnacceptedMemory()``, so
  OVMF accepts all RAM at ExitBootServices) in < 1 s, per preset;
- a 2 TiB host with 64 VMs and a simulated month of VM churn in < 10 minutes and < 8 GiB peak memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

from engine_arg import pop_engine

BOOT_PRESETS = ("upstream", "upm", "upm-nosplit", "hugetlb")

MONTH: dict[str, Any] = {
    "name": "2 TiB host, 64 VMs, a month of churn",
    "seed": 1,
    "duration": "30d",
    "samples": 60,
    "policy": "upstream",
    "host": {"memory": "2T"},
    "churn": {
        "interval": "45m",  # ~64 VMs alive at a time with 2-day lifetimes
        "lifetime": "2d",
        "memory": ["8G", "16G", "32G", "64G"],
        "vcpus": [4, 8, 16],
        "workload": "linux-boot",
        "max_vms": 64,
        "params": {"touch_rate_per_s": 0.001},
    },
    "vms": [],
}


#: the scenario field ``engine`` of every part (``--engine``; None: the default)
ENGINE: str | None = None


def on_engine(doc: dict[str, Any]) -> dict[str, Any]:
    return doc if ENGINE is None else {**doc, "engine": ENGINE}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def part_host() -> dict[str, Any]:
    import snpsim
    from snpsim.scenario import load

    base = peak_mib()
    t = time.perf_counter()
    result = snpsim.run(
        load(
            on_engine(
                {
                    "host": {"memory": "2T"},
                    "vms": [{"memory": "64M", "workload": "idle"}],
                    "duration": "1ms",
                    "samples": 1,
                }
            )
        )
    )
    frames = 1 << 29
    extra = (peak_mib() - base) * 2**20
    return {
        "part": "2 TiB host, one idle 64 MiB VM",
        "seconds": time.perf_counter() - t,
        "bytes_per_frame": extra / frames,
        "target": "<= 4 B/frame",
        "met": extra / frames <= 4,
        "directmap_1g": result.summary["directmap_1g"],
    }


def part_boot(preset: str, size_gib: int = 256) -> dict[str, Any]:
    """The whole boot: the run ends when the guest has booted (as ``snpsim calibrate`` runs a boot), however long
    the simulated boot takes (a 16 GiB full pre-validation boot is 17 simulated seconds)."""
    from snpsim.runner import Simulation
    from snpsim.scenario import load

    # a host of 2.25x the guest: hugetlb's reserved RAM block and its private folios are two copies
    scenario = load(
        on_engine(
            {
                "policy": preset,
                "host": {"memory": f"{size_gib * 9 // 4}G"},
                "duration": "1h",
                "samples": 1,
                "vms": [
                    {
                        "memory": f"{size_gib}G",
                        "vcpus": 64,
                        "workload": "linux-boot",
                        "params": {"touch_rate_per_s": 0},
                        "guest": {"allow_unaccepted_memory": False},
                    }
                ],
            }
        )
    )
    t = time.perf_counter()
    result = Simulation(scenario, stop_after_boot=0).run()
    dt = time.perf_counter() - t
    return {
        "part": f"{size_gib} GiB 64-vCPU boot, full pre-validation, {preset}",
        "seconds": dt,
        "target": "< 1 s",
        "met": dt < 1,
        "peak_mib": peak_mib(),
        "private_gib": result.summary["private_bytes"] / 2**30,
        "booted": result.vms[0].boot_ns is not None,
        "boot_sim_s": (result.vms[0].boot_ns or 0) / 1e9,
    }


def part_month(duration: str) -> dict[str, Any]:
    import snpsim
    from snpsim.scenario import load

    scenario = load(on_engine({**MONTH, "duration": duration}))
    t = time.perf_counter()
    result = snpsim.run(scenario)
    dt = time.perf_counter() - t
    peak = peak_mib()
    return {
        "part": f"2 TiB host, <= 64 VMs, {duration} of churn",
        "seconds": dt,
        "vms_created": len(result.vms),
        "peak_mib": peak,
        "target": "< 600 s and < 8192 MiB for 30d",
        "met": duration == "30d" and dt < 600 and peak < 8192,
    }


def child(args: list[str]) -> None:
    global ENGINE
    ENGINE = pop_engine(args)
    what = args[0]
    out = part_boot(args[1], int(args[2])) if what == "boot" else part_host() if what == "host" else part_month(args[1])
    print(json.dumps(out))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    argv = sys.argv[1:]
    name = pop_engine(argv)
    engine = [] if name is None else ["--engine", name]
    sys.argv[1:] = argv
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    duration = sys.argv[2] if len(sys.argv) > 2 else "30d"
    runs: list[list[str]] = []
    if which in ("all", "host"):
        runs.append(["host"])
    if which in ("all", "boot"):
        size = sys.argv[2] if which == "boot" and len(sys.argv) > 2 else "256"
        runs += [["boot", p, size] for p in BOOT_PRESETS]
    if which in ("all", "month"):
        runs.append(["month", duration])
    for args in runs:
        proc = subprocess.run([sys.executable, __file__, "--child", *engine, *args], capture_output=True, text=True)
        if proc.returncode:
            print(f"{' '.join(args)}: failed\n{proc.stderr[-2000:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        extras = {k: v for k, v in row.items() if k not in ("part", "seconds", "target", "met")}
        shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in extras.items())
        verdict = "met" if row["met"] else "NOT met"
        print(f"{row['part']:<58} {row['seconds']:>8.2f} s  target {row['target']:<32} {verdict:<8} {shown}")


if __name__ == "__main__":
    main()
