"""Scenarios: what to simulate, as a dict or a TOML file, validated into typed objects.

The schema (``shared/DESIGN.md``; every field but ``vms`` has a default)::

    seed = 1                      # RNG seed: a scenario plus its seed always gives identical results
    duration = "10s"              # simulated time (ns/us/ms/s/m/h/d)
    samples = 100                 # timeline rows (evenly spaced, plus t=0)
    policy = "upstream"           # a preset name, or a table of knobs (optionally with preset = base)

    [host]
    memory = "64G"                # installed DRAM
    layout = "server"             # server | flat: the e820 map (snpsim.host.e820): "server" has low RAM, the ISA
                                  # range, the 32-bit PCI hole, RAM above 4 GiB and the BIOS-reserved RMP table;
                                  # "flat" is all of [0, memory) RAM
    pci_hole = "2G"               # server layout: where the 32-bit PCI hole starts (an assumption, see e820)
    rmp_base = "277M"             # server layout: where the BIOS put the RMP table (1M aligned; default: 277M
                                  # if low RAM holds it there, else the top of low RAM)
    directmap_max_level = "1g"    # 1g | 2m | 4k: the largest direct-map mapping the kernel uses
    zero_on_alloc = true          # the allocator zeroes pages through the direct map
    page_cache = 0.0              # share of host memory held by page cache when VMs start; > 0 ages the host
                                  # first (see [host.aging]), so guest and host frames may share 2M ranges
    [host.aging]                  # how the host was used before the VMs start (snpsim.host.aging)
    mode = "churn"                # churn: allocation/free churn through the allocator | uniform-scatter:
                                  # adversarial, page cache uniformly in every 2M range
    uptime = "1d"                 # the uptime replayed, in steps of one epoch
    epoch = "4h"
    peak = 0.6                    # largest page-cache share during the uptime (levels drawn in [page_cache, peak])
    turnover = 0.05               # page cache deleted per hour
    unmovable = 0.01              # slab and page tables (unmovable kernel memory)
    reclaimable = 0.015           # reclaimable slab (dentries, inodes)
    kernel_turnover = 0.02        # kernel memory freed and reallocated per hour
    [host.writers.page_zeroing]   # kernel writers: page_zeroing, compaction, ksm, hibernation (see host.writers)
    interval = "1ms"

    [[vms]]
    memory = "4G"
    vcpus = 4
    workload = "linux-boot"       # see snpsim.guest.workloads.WORKLOADS
    count = 1
    start = "0s"                  # when the VM starts
    lifetime = "1h"               # optional: destroyed after this long
    [vms.guest]                   # LinuxGuestConfig assumptions (lazy_accept, ...)
    [vms.params]                  # parameters of the workload

    [churn]                       # optional host-level VM churn
    interval = "10m"              # mean time between VM creations (exponential)
    lifetime = "1h"               # mean VM lifetime (exponential)
    memory = ["2G", "4G", "8G"]   # sizes drawn uniformly
    vcpus = [2, 4, 8]
    workload = "linux-boot"
    max_vms = 32

    [costs]                       # snpsim.hw.costs.CostModel overrides, in ns

Every mistake raises :class:`snpsim.ConfigError` naming the field (``vms[0].memory``).
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snpsim.errors import ConfigError
from snpsim.guest.linux import LinuxGuestConfig
from snpsim.host.aging import AgingSpec
from snpsim.host.e820 import DEFAULT_PCI_HOLE, HostMemoryMap, flat_memory_map, server_memory_map
from snpsim.hw.costs import CostModel
from snpsim.hw.types import PAGE_SHIFT, PageSize
from snpsim.policy import Policy, resolve_policy
from snpsim.units import parse_duration, parse_size

#: The built-in scenario ``snpsim run`` uses without a config file (every preset is run on it): a Linux SNP guest
#: boots on an aged 4 GiB host (a day of uptime, a fifth of memory page cache), then a day of VM churn follows (small
#: SNP guests created every 2 h on average, living 4 h, at most 4 at a time), with page-cache churn (zeroing
#: allocations), compaction and KSM running. Guests touch their private memory rarely (every 20 s), enough to see
#: integrity loss without making a simulated day slow.
DEFAULT_SCENARIO: dict[str, Any] = {
    "name": "default: Linux guest boot + a day of host VM churn",
    "seed": 1,
    "duration": "24h",
    "samples": 48,
    "policy": "upstream",
    "host": {
        "memory": "4G",
        "page_cache": 0.2,
        "writers": {
            "page_zeroing": {"interval": "1m", "batch": 256, "resident_pages": 8192},
            "compaction": {"interval": "10m"},
            "ksm": {"interval": "10m"},
        },
    },
    "vms": [{"memory": "1G", "vcpus": 4, "workload": "linux-boot", "params": {"touch_rate_per_s": 0.05}}],
    "churn": {
        "interval": "2h",
        "lifetime": "4h",
        "memory": ["256M", "512M"],
        "vcpus": [1, 2],
        "workload": "linux-boot",
        "max_vms": 4,
        "params": {"touch_rate_per_s": 0.05},
    },
}

_TOP = {"seed", "duration", "samples", "policy", "host", "vms", "churn", "costs", "name"}
_HOST = {
    "memory",
    "layout",
    "pci_hole",
    "rmp_base",
    "directmap_max_level",
    "zero_on_alloc",
    "writers",
    "page_cache",
    "aging",
}
_LAYOUTS = ("server", "flat")
_VM = {"memory", "vcpus", "workload", "count", "start", "lifetime", "guest", "params"}
_CHURN = {"interval", "lifetime", "memory", "vcpus", "workload", "max_vms", "guest", "params"}
_WRITERS = {"page_zeroing", "compaction", "ksm", "hibernation"}
_LEVELS = {"1g": PageSize.SIZE_1G, "2m": PageSize.SIZE_2M, "4k": PageSize.SIZE_4K}


@dataclass(frozen=True)
class VmSpec:
    memory: int
    vcpus: int
    workload: str
    count: int = 1
    start_ns: int = 0
    lifetime_ns: int | None = None
    guest: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def guest_config(self, where: str = "vm") -> LinuxGuestConfig:
        """The guest's :class:`LinuxGuestConfig` (validated; errors name ``where.guest``)."""
        return LinuxGuestConfig.from_dict(
            {**self.guest, "memory": self.memory, "vcpus": self.vcpus}, field=f"{where}.guest"
        )


@dataclass(frozen=True)
class ChurnSpec:
    interval_ns: int
    lifetime_ns: int
    memory: tuple[int, ...]
    vcpus: tuple[int, ...]
    workload: str
    max_vms: int
    guest: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    seed: int
    duration_ns: int
    samples: int
    policy: Policy
    host_memory: int
    directmap_max_level: PageSize
    zero_on_alloc: bool
    page_cache: float
    writers: dict[str, dict[str, Any]]
    vms: tuple[VmSpec, ...]
    churn: ChurnSpec | None
    costs: CostModel
    name: str = ""
    aging: AgingSpec = field(default_factory=AgingSpec)
    #: ``host.layout``, ``host.pci_hole``, ``host.rmp_base`` (None: the default placement)
    host_layout: str = "server"
    pci_hole: int = DEFAULT_PCI_HOLE
    rmp_base: int | None = None

    def memory_map(self) -> HostMemoryMap:
        """The host's e820 map (:mod:`snpsim.host.e820`) from ``host.memory`` and ``host.layout``."""
        if self.host_layout == "flat":
            return flat_memory_map(self.host_memory >> PAGE_SHIFT)
        return server_memory_map(self.host_memory, pci_hole=self.pci_hole, rmp_base=self.rmp_base)


def _table(value: object, field_name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(field_name, f"expected a table, got {type(value).__name__}")
    return value


def _unknown(data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(where, f"unknown field (known: {', '.join(sorted(allowed))})")


def _int(value: object, field_name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field_name, f"expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ConfigError(field_name, f"must be in [{lo}, {hi if hi is not None else '∞'}], got {value}")
    return value


def _workload(value: object, field_name: str) -> str:
    from snpsim.guest.workloads import WORKLOADS

    if not isinstance(value, str) or value not in WORKLOADS:
        raise ConfigError(field_name, f"unknown workload {value!r} (workloads: {', '.join(WORKLOADS)})")
    return value


def _vm_memory(value: object, field_name: str) -> int:
    size = parse_size(value, field_name)
    if size < (64 << 20) or size % (2 << 20):
        raise ConfigError(field_name, "guest memory must be a multiple of 2M and at least 64M")
    return size


def _dict(value: object, field_name: str) -> dict[str, Any]:
    return dict(_table(value, field_name))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table of a scenario TOML file; unreadable or invalid files raise :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from None


def load(source: Mapping[str, Any] | str | Path) -> Scenario:
    """Validate a scenario given as a dict or the path of a TOML file."""
    data = read_toml(source) if isinstance(source, str | Path) else _table(source, "scenario")
    _unknown(data, _TOP, "")
    seed = _int(data.get("seed", 1), "seed", 0)
    duration = parse_duration(data.get("duration", "10s"), "duration")
    samples = _int(data.get("samples", 100), "samples", 1, 100_000)
    policy = resolve_policy(data.get("policy", "upstream"))

    host = _table(data.get("host", {}), "host")
    _unknown(host, _HOST, "host")
    host_memory = parse_size(host.get("memory", "64G"), "host.memory")
    if host_memory < (64 << 20) or host_memory % 4096:
        raise ConfigError("host.memory", "must be a multiple of 4K and at least 64M")
    layout = host.get("layout", "server")
    if layout not in _LAYOUTS:
        raise ConfigError("host.layout", f"expected one of {', '.join(_LAYOUTS)}, got {layout!r}")
    pci_hole = parse_size(host.get("pci_hole", DEFAULT_PCI_HOLE), "host.pci_hole")
    rmp_base = None if host.get("rmp_base") is None else parse_size(host["rmp_base"], "host.rmp_base")
    if layout == "flat" and ("pci_hole" in host or "rmp_base" in host):
        where = "host.pci_hole" if "pci_hole" in host else "host.rmp_base"
        raise ConfigError(where, "only the server layout has a PCI hole and an RMP reservation")
    try:
        ram_bytes = (
            server_memory_map(host_memory, pci_hole=pci_hole, rmp_base=rmp_base).ram_bytes
            if layout == "server"
            else host_memory
        )
    except ValueError as exc:
        param, _, why = str(exc).partition(": ")
        raise ConfigError(f"host.{param}", why) from None
    level_name = host.get("directmap_max_level", "1g")
    if level_name not in _LEVELS:
        raise ConfigError("host.directmap_max_level", f"expected one of 1g, 2m, 4k, got {level_name!r}")
    zero = host.get("zero_on_alloc", True)
    if not isinstance(zero, bool):
        raise ConfigError("host.zero_on_alloc", f"expected true or false, got {zero!r}")
    page_cache = host.get("page_cache", 0.0)
    if isinstance(page_cache, bool) or not isinstance(page_cache, int | float) or not 0 <= page_cache < 1:
        raise ConfigError("host.page_cache", f"expected a fraction in [0, 1), got {page_cache!r}")
    aging = AgingSpec.from_dict(host.get("aging", {}), float(page_cache))
    writers = _table(host.get("writers", {}), "host.writers")
    _unknown(writers, _WRITERS, "host.writers")
    writer_cfg = {k: _writer(k, v) for k, v in writers.items()}

    raw_vms = data.get("vms", [])
    if not isinstance(raw_vms, list):
        raise ConfigError("vms", "expected a list of VM tables")
    vms = tuple(_vm(v, f"vms[{i}]") for i, v in enumerate(raw_vms))
    churn = _churn(data["churn"]) if "churn" in data else None
    if not vms and churn is None:
        raise ConfigError("vms", "a scenario needs at least one VM (or a [churn] section)")
    total = sum(v.memory * v.count for v in vms if v.start_ns == 0)
    if total > ram_bytes:
        raise ConfigError(
            "vms",
            f"the VMs started at t=0 need {total} bytes, more than host.memory's {ram_bytes} bytes of RAM "
            "(the DRAM less the e820 reservations and the RMP table)",
        )
    return Scenario(
        seed=seed,
        duration_ns=duration,
        samples=samples,
        policy=policy,
        host_memory=host_memory,
        directmap_max_level=_LEVELS[level_name],
        zero_on_alloc=zero,
        page_cache=float(page_cache),
        writers=writer_cfg,
        vms=vms,
        churn=churn,
        costs=CostModel.from_mapping(data.get("costs")),
        name=str(data.get("name", "")),
        host_layout=layout,
        pci_hole=pci_hole,
        rmp_base=rmp_base,
        aging=aging,
    )


def _writer(name: str, value: object) -> dict[str, Any]:
    from snpsim.host.writers import WRITERS

    table = _dict(value, f"host.writers.{name}")
    accepted = set(list(inspect.signature(WRITERS[name]).parameters)[2:])
    out: dict[str, Any] = {}
    for key, v in table.items():
        where = f"host.writers.{name}.{key}"
        param = f"{key}_ns" if key in ("interval", "at") else key
        if param not in accepted:
            known = sorted(p.removesuffix("_ns") for p in accepted)
            raise ConfigError(where, f"unknown parameter (known: {', '.join(known)})")
        if key in ("interval", "at"):
            out[f"{key}_ns"] = parse_duration(v, where)
        elif isinstance(v, int):
            out[key] = v
        else:
            raise ConfigError(where, f"expected a number or a duration, got {v!r}")
    return out


def _vm(value: object, where: str) -> VmSpec:
    t = _table(value, where)
    _unknown(t, _VM, where)
    if "memory" not in t:
        raise ConfigError(f"{where}.memory", "missing (the guest's RAM, e.g. '4G')")
    lifetime = t.get("lifetime")
    spec = VmSpec(
        memory=_vm_memory(t["memory"], f"{where}.memory"),
        vcpus=_int(t.get("vcpus", 1), f"{where}.vcpus", 1, 4096),
        workload=_workload(t.get("workload", "linux-boot"), f"{where}.workload"),
        count=_int(t.get("count", 1), f"{where}.count", 1, 4096),
        start_ns=parse_duration(t.get("start", 0), f"{where}.start"),
        lifetime_ns=None if lifetime is None else parse_duration(lifetime, f"{where}.lifetime"),
        guest=_dict(t.get("guest", {}), f"{where}.guest"),
        params=_dict(t.get("params", {}), f"{where}.params"),
    )
    spec.guest_config(where)
    return spec


def _churn(value: object) -> ChurnSpec:
    t = _table(value, "churn")
    _unknown(t, _CHURN, "churn")
    mem = t.get("memory", ["2G", "4G"])
    vcpus = t.get("vcpus", [2, 4])
    if not isinstance(mem, list) or not mem:
        raise ConfigError("churn.memory", "expected a non-empty list of sizes")
    if not isinstance(vcpus, list) or not vcpus:
        raise ConfigError("churn.vcpus", "expected a non-empty list of vCPU counts")
    return ChurnSpec(
        interval_ns=max(1, parse_duration(t.get("interval", "10m"), "churn.interval")),
        lifetime_ns=max(1, parse_duration(t.get("lifetime", "1h"), "churn.lifetime")),
        memory=tuple(_vm_memory(m, f"churn.memory[{i}]") for i, m in enumerate(mem)),
        vcpus=tuple(_int(v, f"churn.vcpus[{i}]", 1, 4096) for i, v in enumerate(vcpus)),
        workload=_workload(t.get("workload", "linux-boot"), "churn.workload"),
        max_vms=_int(t.get("max_vms", 32), "churn.max_vms", 1, 100_000),
        guest=_dict(t.get("guest", {}), "churn.guest"),
        params=_dict(t.get("params", {}), "churn.params"),
    )
