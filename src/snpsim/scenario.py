"""Scenarios: what to simulate, as a dict or a TOML file, validated into typed objects.

The schema (``shared/DESIGN.md``; every field but ``vms`` has a default)::

    seed = 1                      # RNG seed: a scenario plus its seed always gives identical results
    duration = "10s"              # simulated time, > 0; every duration needs its unit (ns/us/ms/s/m/h/d)
    samples = 100                 # timeline rows (evenly spaced, plus t=0)
    policy = "upstream"           # a preset name, or a table of knobs (optionally with preset = base)
    engine = "fast"               # fast | reference (snpsim.engine): which implementation runs; never the result

    [host]
    memory = "64G"                # installed DRAM, at most 64 TiB (x86-64 4-level paging: the direct map's 64 TB)
    layout = "server"             # server | flat: the e820 map (snpsim.host.e820): "server" has low RAM, the ISA
                                  # range, the 32-bit PCI hole, RAM above 4 GiB and the BIOS-reserved RMP table;
                                  # "flat" is all of [0, memory) RAM
    pci_hole = "2G"               # server layout: where the 32-bit PCI hole starts (an assumption, see e820)
    rmp_base = "277M"             # server layout: where the BIOS put the RMP table (1M aligned; default: 277M
                                  # if low RAM holds it there, else the top of low RAM)
    directmap_max_level = "1g"    # 1g | 2m | 4k: the largest direct-map mapping the kernel uses
    zero_on_alloc = true          # the allocator zeroes pages through the direct map
    transparent_hugepage = "always"   # always | madvise | never: /sys/kernel/mm/transparent_hugepage/enabled
                                  # (Kconfig default always); QEMU madvises guest RAM MADV_HUGEPAGE, so
                                  # shared_backing = "thp" gets THPs with always or madvise, 4K pages with never
    hugepages = {"2m" = 512}      # optional: the persistent hugetlb pool allocated at boot (hugepages=N per size,
                                  # 2m | 1g), no overcommit; absent: each hugetlbfs mmap gathers surplus pages
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
    interval = "1ms"              # >= 1us; the other keys are the writer's keyword parameters (``at`` = ``at_ns``)

    [[vms]]
    memory = "4G"
    vcpus = 4
    workload = "linux-boot"       # see snpsim.guest.workloads.WORKLOADS
    count = 1
    start = "0s"                  # when the VM starts
    lifetime = "1h"               # optional: destroyed after this long
    [vms.guest]                   # LinuxGuestConfig assumptions (lazy_accept, ...)
    [vms.params]                  # keyword parameters of the workload's run-time function, checked up front

    [churn]                       # optional host-level VM churn
    interval = "10m"              # mean time between VM creations (exponential), >= 1us
    lifetime = "1h"               # mean VM lifetime (exponential), > 0
    memory = ["2G", "4G", "8G"]   # sizes drawn uniformly, each at most host.memory
    vcpus = [2, 4, 8]
    workload = "linux-boot"
    max_vms = 32

    [costs]                       # snpsim.hw.costs.CostModel overrides, in ns

Every mistake raises :class:`snpsim.ConfigError` naming the field (``vms[0].memory``,
``vms[0].params.rate_per_s``), before anything is simulated:

- workload parameters are checked against the signature and annotations of the workload's run-time functions
  (:mod:`snpsim.params`; names, types, ``"4M"``/``"10ms"`` strings), then the workload is constructed once so
  that its own range checks run (``rate_per_s = -1``); a ``*rate_per_s`` whose expected events in the duration
  exceed ``MAX_EVENTS`` is refused;
- writer parameters likewise against the writer's keyword-only parameters (required ones included; their
  integers are counts per wake-up or scan bounds, >= 1); every
  ``interval`` is at least ``MIN_INTERVAL_NS`` (1 us): the writers and the churn process wake up once per interval,
  and an interval of 0 (or one the ±50 % jitter rounds to 0) would keep simulated time from advancing at all;
- a VM or churn size that can never fit the host (larger than ``host.memory``) is refused, and so is a guest
  whose RAM is not a whole number of the policy's private pages (``private_granularity = "1g"`` on a 128M guest:
  guest_memfd of HugeTLB pages takes only whole pages, ``test_create_guest_memfd_invalid_sizes()`` in the
  HugeTLB guest_memfd series' selftests expects EINVAL) or is smaller than one page of a ``hugetlb-1g`` shared
  backing (QEMU ``file_ram_alloc``: "memory size ... must be equal to or larger than page size").
"""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snpsim.arch import PAGE_SHIFT, PageSize
from snpsim.engine import DEFAULT_ENGINE, ENGINES
from snpsim.errors import ConfigError
from snpsim.guest.linux import MAX_MEMORY_BYTES, MIN_MEMORY_BYTES, LinuxGuestConfig
from snpsim.host.aging import AgingSpec
from snpsim.host.e820 import DEFAULT_PCI_HOLE, HostMemoryMap, flat_memory_map, server_memory_map
from snpsim.hw.costs import CostModel
from snpsim.params import check as check_param
from snpsim.params import parameters
from snpsim.policy import Policy, resolve_policy
from snpsim.units import format_bytes, format_duration, parse_duration, parse_size

#: Largest host: x86-64 Linux with 4-level paging maps all physical memory in a 64 TB direct map
#: (Documentation/arch/x86/x86_64/mm.rst: "ffff888000000000 ... 64 TB direct mapping of all physical memory").
MAX_HOST_MEMORY = 64 << 40
#: Most events a workload's Poisson stream may be asked for [I-model]: a ``*rate_per_s`` parameter times the
#: scenario's duration above this is refused (``touch_rate_per_s = 1e308`` would never finish; 30 simulated days
#: at the default 100 touches/s are 2.6e8, allowed).
MAX_EVENTS = 10**9
#: Shortest ``interval`` of a kernel writer or of VM churn [I-model]: they wake up once per interval, so 0 (or a
#: value their jitter rounds to 0) would stop simulated time; below a microsecond they would only burn CPU.
MIN_INTERVAL_NS = 1_000

#: The built-in scenario ``snpsim run`` uses without a config file (every preset is run on it): a Linux SNP guest
#: boots on an aged 8 GiB host (a day of uptime, a fifth of memory page cache), then a day of VM churn follows (small
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
        "memory": "8G",
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

_TOP = {"seed", "duration", "samples", "policy", "host", "vms", "churn", "costs", "name", "engine"}
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
    "transparent_hugepage",
    "hugepages",
}
_LAYOUTS = ("server", "flat")
_VM = {"memory", "vcpus", "workload", "count", "start", "lifetime", "guest", "params"}
_CHURN = {"interval", "lifetime", "memory", "vcpus", "workload", "max_vms", "guest", "params"}
_WRITERS = {"page_zeroing", "compaction", "ksm", "hibernation", "vhost", "qemu_device", "kvm_pv"}
_LEVELS = {"1g": PageSize.SIZE_1G, "2m": PageSize.SIZE_2M, "4k": PageSize.SIZE_4K}
_THP_MODES = ("always", "madvise", "never")
#: hugetlb page sizes of ``host.hugepages`` and their buddy orders
_HUGEPAGE_ORDERS = {"2m": 9, "1g": 18}


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
    #: ``host.transparent_hugepage`` and ``host.hugepages`` (huge page order -> pool pages; None: no pool)
    transparent_hugepage: str = "always"
    hugepages: dict[int, int] | None = None
    #: ``engine`` (:mod:`snpsim.engine`): which implementation runs the model; never changes a result
    engine: str = DEFAULT_ENGINE

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


def vm_memory(value: object, field_name: str) -> int:
    """Guest RAM in bytes (a size string or bytes): a multiple of 2M in [64M, 16T], else :class:`ConfigError`."""
    size = parse_size(value, field_name)
    if size < MIN_MEMORY_BYTES or size % (2 << 20) or size > MAX_MEMORY_BYTES:
        raise ConfigError(
            field_name, f"guest memory must be a multiple of 2M, at least 64M and at most 16T, got {value!r}"
        )
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
    if duration <= 0:
        raise ConfigError("duration", "must be longer than 0 (e.g. '10s')")
    samples = _int(data.get("samples", 100), "samples", 1, 100_000)
    policy = resolve_policy(data.get("policy", "upstream"))
    engine = data.get("engine", DEFAULT_ENGINE)
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ConfigError("engine", f"expected one of {', '.join(ENGINES)}, got {engine!r}")

    host = _table(data.get("host", {}), "host")
    _unknown(host, _HOST, "host")
    host_memory = parse_size(host.get("memory", "64G"), "host.memory")
    if host_memory < (64 << 20) or host_memory % 4096 or host_memory > MAX_HOST_MEMORY:
        raise ConfigError(
            "host.memory", f"must be a multiple of 4K, at least 64M and at most 64T, got {host.get('memory')!r}"
        )
    layout = host.get("layout", "server")
    if not isinstance(layout, str) or layout not in _LAYOUTS:
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
    if not isinstance(level_name, str) or level_name not in _LEVELS:
        raise ConfigError("host.directmap_max_level", f"expected one of 1g, 2m, 4k, got {level_name!r}")
    zero = host.get("zero_on_alloc", True)
    if not isinstance(zero, bool):
        raise ConfigError("host.zero_on_alloc", f"expected true or false, got {zero!r}")
    page_cache = host.get("page_cache", 0.0)
    if isinstance(page_cache, bool) or not isinstance(page_cache, int | float) or not 0 <= page_cache < 1:
        raise ConfigError("host.page_cache", f"expected a fraction in [0, 1), got {page_cache!r}")
    aging = AgingSpec.from_dict(host.get("aging", {}), float(page_cache))
    thp = host.get("transparent_hugepage", "always")
    if not isinstance(thp, str) or thp not in _THP_MODES:
        raise ConfigError("host.transparent_hugepage", f"expected one of {', '.join(_THP_MODES)}, got {thp!r}")
    hugepages = _hugepages(host["hugepages"], ram_bytes) if "hugepages" in host else None
    writers = _table(host.get("writers", {}), "host.writers")
    _unknown(writers, _WRITERS, "host.writers")
    writer_cfg = {k: _writer(k, v) for k, v in writers.items()}

    raw_vms = data.get("vms", [])
    if not isinstance(raw_vms, list):
        raise ConfigError("vms", "expected a list of VM tables")
    vms = tuple(_vm(v, f"vms[{i}]", duration) for i, v in enumerate(raw_vms))
    churn = _churn(data["churn"], duration) if "churn" in data else None
    if not vms and churn is None:
        raise ConfigError("vms", "a scenario needs at least one VM (or a [churn] section)")
    total = sum(v.memory * v.count for v in vms if v.start_ns == 0)
    if total > ram_bytes:
        raise ConfigError(
            "vms",
            f"the VMs started at t=0 need {total} bytes, more than host.memory's {ram_bytes} bytes of RAM "
            "(the DRAM less the e820 reservations and the RMP table)",
        )
    sizes = [(f"vms[{i}].memory", v.memory) for i, v in enumerate(vms)]
    sizes += [(f"churn.memory[{i}]", m) for i, m in enumerate(churn.memory if churn else ())]
    for where, size in sizes:
        _fits(size, where, ram_bytes, policy)
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
        transparent_hugepage=thp,
        hugepages=hugepages,
        engine=engine,
    )


def _hugepages(value: object, ram_bytes: int) -> dict[int, int]:
    """``host.hugepages``: pool pages per huge page size, at most what the host's RAM holds."""
    table = _table(value, "host.hugepages")
    _unknown(table, set(_HUGEPAGE_ORDERS), "host.hugepages")
    out = {}
    for size, count in table.items():
        order = _HUGEPAGE_ORDERS[size]
        most = ram_bytes >> (PAGE_SHIFT + order)
        out[order] = _int(count, f"host.hugepages.{size}", 0, most)
    return out


def _fits(size: int, where: str, ram_bytes: int, policy: Policy) -> None:
    """Refuse a guest that can never be backed: larger than the host's RAM, or not whole pages of the policy."""
    if size > ram_bytes:
        raise ConfigError(
            where, f"{format_bytes(size)} is more than the host's {format_bytes(ram_bytes)} of RAM: never fits"
        )
    folio = policy.private_page_bytes
    if policy.private_backing == "gmem" and size % folio:
        raise ConfigError(
            where,
            f"{format_bytes(size)} is not a whole number of the policy's {format_bytes(folio)} private pages "
            f"(policy.private_granularity = {policy.private_granularity!r}: guest_memfd takes whole huge pages only)",
        )
    if policy.shared_backing.startswith("hugetlb") and size < policy.shared_page_bytes:
        raise ConfigError(
            where,
            f"{format_bytes(size)} is smaller than one {format_bytes(policy.shared_page_bytes)} page of the shared "
            f"backing (policy.shared_backing = {policy.shared_backing!r}; QEMU: memory size must be equal to or "
            "larger than page size)",
        )


def _interval(value: object, where: str) -> int:
    ns = parse_duration(value, where)
    if ns < MIN_INTERVAL_NS:
        raise ConfigError(where, f"must be at least 1us, got {value!r} (the process wakes up once per interval)")
    return ns


def _writer(name: str, value: object) -> dict[str, Any]:
    """A writer's parameters, checked against its keyword-only parameters (``interval`` sets ``interval_ns``)."""
    from snpsim.host.writers import WRITERS

    table = _dict(value, f"host.writers.{name}")
    kinds = {n: p.kind for n, p in inspect.signature(WRITERS[name]).parameters.items()}
    accepted = {n: p for n, p in parameters(WRITERS[name]).items() if kinds[n] is inspect.Parameter.KEYWORD_ONLY}
    shown = {p.removesuffix("_ns"): p for p in accepted}  # scenario keys: durations without their _ns suffix
    out: dict[str, Any] = {}
    for key, v in table.items():
        where = f"host.writers.{name}.{key}"
        param = shown.get(key)
        if param is None:
            raise ConfigError(where, f"unknown parameter (known: {', '.join(sorted(shown))})")
        if param.endswith("_ns"):
            ns = _interval(v, where) if key == "interval" else parse_duration(v, where)
            out[param] = ns
            continue
        checked = check_param(accepted[param], v, where)
        if isinstance(checked, int) and not isinstance(checked, bool) and checked < 1:
            # counts per wake-up and scan bounds (batch, pages_to_scan, max_scan, resident_pages, max_pages): a
            # writer with 0 would do nothing at best (compaction and ksm index the last page they found)
            raise ConfigError(where, f"must be >= 1, got {v!r}")
        out[param] = checked
    for key, param in shown.items():
        if accepted[param].required and param not in out:
            raise ConfigError(f"host.writers.{name}.{key}", "missing (this writer needs it)")
    return out


def _workload_params(
    workload: str, params: dict[str, Any], cfg: LinuxGuestConfig, duration_ns: int, where: str
) -> None:
    """Check a workload's parameters before simulating: names and types from the signatures and annotations of
    the run-time functions its registry entry calls, then the workload's own checks (it is constructed once with
    a throwaway generator; nothing is iterated). Errors name ``where.params.NAME``."""
    import numpy as np

    from snpsim.guest.workloads import WORKLOADS

    fn = WORKLOADS[workload]
    hints = {name: p for part in _runtime_functions(fn) for name, p in parameters(part, skip=_CALLER_SET).items()}
    for key, value in params.items():
        if key in hints:
            check_param(hints[key], value, f"{where}.params.{key}")
        rate = key.endswith("rate_per_s") and "bytes" not in key
        if (
            rate
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and value * duration_ns > MAX_EVENTS * 1e9
        ):
            raise ConfigError(
                f"{where}.params.{key}",
                f"{value:g}/s for {format_duration(duration_ns)} is {value * duration_ns / 1e9:.3g} events; the model "
                f"simulates at most {MAX_EVENTS:.0e} per stream",
            )
    try:
        fn(cfg, np.random.default_rng(0), duration_ns, **params)
    except ConfigError as e:
        raise _under_params(e, where, params) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}.params", str(e)) from None


#: Parameters of a workload's run-time function that the registry entry sets itself (the module's contract:
#: streams start at ``start_ns`` and stop before ``until_ns``).
_CALLER_SET = ("cfg", "rng", "until_ns", "start_ns")


def _runtime_functions(fn: Any) -> list[Any]:
    """The public run-time functions of :mod:`snpsim.guest.workloads` (``f(cfg, rng, ...)``) that the registry
    entry ``fn`` calls: the one it closes over (``_with_boot(dma_churn)``) and those it names (``_kexec``)."""
    from snpsim.guest import workloads

    refs = inspect.getclosurevars(fn)
    found = []
    for value in [*refs.nonlocals.values(), *refs.globals.values()]:
        if not inspect.isfunction(value) or value.__name__ not in workloads.__all__:
            continue
        if list(inspect.signature(value).parameters)[:2] == ["cfg", "rng"]:
            found.append(value)
    return found


def _under_params(e: ConfigError, where: str, params: dict[str, Any]) -> ConfigError:
    """A workload's error (``params.rate``, or ``params: rate_per_s must be ...``) re-rooted at ``where``."""
    if e.field != "params":
        return ConfigError(f"{where}.{e.field}", e.message)
    name, _, rest = e.message.partition(" ")
    if name in params and rest:
        return ConfigError(f"{where}.params.{name}", rest)
    return ConfigError(f"{where}.params", e.message)


def _vm(value: object, where: str, duration_ns: int) -> VmSpec:
    t = _table(value, where)
    _unknown(t, _VM, where)
    if "memory" not in t:
        raise ConfigError(f"{where}.memory", "missing (the guest's RAM, e.g. '4G')")
    lifetime = t.get("lifetime")
    spec = VmSpec(
        memory=vm_memory(t["memory"], f"{where}.memory"),
        vcpus=_int(t.get("vcpus", 1), f"{where}.vcpus", 1, 4096),
        workload=_workload(t.get("workload", "linux-boot"), f"{where}.workload"),
        count=_int(t.get("count", 1), f"{where}.count", 1, 4096),
        start_ns=parse_duration(t.get("start", 0), f"{where}.start"),
        lifetime_ns=None if lifetime is None else parse_duration(lifetime, f"{where}.lifetime"),
        guest=_guest(t.get("guest", {}), f"{where}.guest"),
        params=_dict(t.get("params", {}), f"{where}.params"),
    )
    _workload_params(spec.workload, spec.params, spec.guest_config(where), duration_ns, where)
    return spec


def _guest(value: object, where: str) -> dict[str, Any]:
    table = _dict(value, where)
    for key in ("memory", "vcpus"):
        if key in table:
            parent = where.removesuffix(".guest")
            raise ConfigError(f"{where}.{key}", f"set {parent}.{key} instead (the VM's own field)")
    return table


def _churn(value: object, duration_ns: int) -> ChurnSpec:
    t = _table(value, "churn")
    _unknown(t, _CHURN, "churn")
    mem = t.get("memory", ["2G", "4G"])
    vcpus = t.get("vcpus", [2, 4])
    if not isinstance(mem, list) or not mem:
        raise ConfigError("churn.memory", "expected a non-empty list of sizes")
    if not isinstance(vcpus, list) or not vcpus:
        raise ConfigError("churn.vcpus", "expected a non-empty list of vCPU counts")
    lifetime = parse_duration(t.get("lifetime", "1h"), "churn.lifetime")
    if lifetime <= 0:
        raise ConfigError("churn.lifetime", "must be longer than 0 (the mean lifetime of a churned VM)")
    spec = ChurnSpec(
        interval_ns=_interval(t.get("interval", "10m"), "churn.interval"),
        lifetime_ns=lifetime,
        memory=tuple(vm_memory(m, f"churn.memory[{i}]") for i, m in enumerate(mem)),
        vcpus=tuple(_int(v, f"churn.vcpus[{i}]", 1, 4096) for i, v in enumerate(vcpus)),
        workload=_workload(t.get("workload", "linux-boot"), "churn.workload"),
        max_vms=_int(t.get("max_vms", 32), "churn.max_vms", 1, 100_000),
        guest=_guest(t.get("guest", {}), "churn.guest"),
        params=_dict(t.get("params", {}), "churn.params"),
    )
    for memory in sorted(set(spec.memory)):
        for vcpus_n in sorted(set(spec.vcpus)):
            cfg = VmSpec(memory, vcpus_n, spec.workload, guest=spec.guest).guest_config("churn")
            _workload_params(spec.workload, spec.params, cfg, duration_ns, "churn")
    return spec
