"""An explicit-state explorer of the interleavings of host accessors, kernel writers and a guest (issue 14).

The hazard of the seed thread is a race: the host writes a page it thinks is shared while the guest converts it.
The engine (:mod:`snpsim.runner`) samples one interleaving per seed; this module searches all of them for a small
configuration, breadth-first, on the real layer code, so the first counterexample it finds for each outcome is a
shortest one.

A *world* is one host (:class:`~snpsim.host.HostKernel`, ``NFRAMES`` frames), one VM (:class:`~snpsim.vmm.qemu.Qemu`
over ``GUEST_PAGES`` gfns, every page launched private and validated) and its guest (:class:`SnpGuest`, driven
through QEMU's exit loop as :class:`snpsim.runner.GuestDriver` does). A few guest pages are the ones host code
writes (``targets``: a virtqueue page, the kvmclock page, the GHCB, ...), made shared and backed as the boot leaves
them. Each *step* is one atomic action of one actor:

- ``vcpuN``: ``convert gfn G to private`` / ``convert gfn G to shared`` (the whole ``set_memory_*`` of one page:
  PSC and PVALIDATE, through KVM and the VMM), ``read gfn G`` (the guest consumes a page it holds private);
- each enabled host accessor (scenario ``host.writers``: ``vhost``, ``qemu_device``, ``kvm_pv``): one write of one
  target page through its path (:data:`snpsim.host.uaccess.ACCESSORS`);
- ``page_zeroing`` (if enabled): the allocator hands out and zeroes one page (``kernel_init_pages``).

After every step the world is checked for the outcomes: ``host-crash`` (an oops), ``guest-terminated`` (the guest
took #VC 0x404 and terminated, or QEMU died of SIGBUS), ``host-data-loss`` (a host write the guest never sees:
``host_lost_write_count``), ``guest-integrity`` (a host write changed a validated private page: the hardware's RMP
check forbids it, so finding one would be a model bug). A world with an outcome is not expanded further. States
are deduplicated by a hash of the guest's memory state (attributes, NPT, backing frames, RMP entries, direct map,
the guest's validated pages, the counters) so commuting steps are explored once. Children are made from a
pickled snapshot of their parent (:func:`snapshot`, a deep copy); everything is deterministic (no RNG: actions
are enumerated in a fixed order).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snpsim.engine import DEFAULT_ENGINE, engine
from snpsim.errors import ConfigError
from snpsim.guest.events import Access, Conversion
from snpsim.guest.executor import SnpGuest
from snpsim.host import HostKernel, Owner
from snpsim.host.uaccess import ACCESSORS, Accessor, guest_write
from snpsim.metrics import Counters
from snpsim.policy import Policy, presets
from snpsim.runner import GuestDriver, GuestRamView
from snpsim.vmm.qemu import Qemu

#: host frames of the explorer's world (16 MiB) and the guest's gfns (2 MiB)
NFRAMES = 4096
GUEST_PAGES = 512
DEFAULT_DEPTH = 4
OUTCOMES = ("host-crash", "guest-integrity", "host-data-loss", "guest-terminated")
#: the target pages of the world: kind -> gfn (one page each, away from the 2M edges)
TARGET_GFNS = {"virtqueue": 16, "bounce": 17, "steal_time": 18, "kvmclock": 19, "ghcb": 20}
#: which accessors each scenario writer enables
WRITER_ACCESSORS = {
    "vhost": ("vhost_net_rx",),
    "qemu_device": ("qemu_virtio",),
    "kvm_pv": ("steal_time", "kvmclock", "ghcb"),
}
KERNEL_WRITERS = ("page_zeroing",)


@dataclass(frozen=True)
class Counterexample:
    """A shortest schedule reaching ``outcome`` under ``preset``: one ``"actor: action"`` string per step."""

    preset: str
    outcome: str
    steps: list[str]
    #: states explored when it was found
    states: int = 0


@dataclass
class ExploreStats:
    """What one preset's search did."""

    preset: str
    states: int = 0
    seconds: float = 0.0
    depth: int = 0


@dataclass(frozen=True)
class ExploreConfig:
    """The small configuration searched: the actors (scenario ``host.writers`` names), vCPUs, the guest's
    ``on_vc_404``, and which target kinds exist."""

    writers: tuple[str, ...] = ("vhost", "kvm_pv")
    vcpus: int = 1
    on_vc_404: str = "terminate"
    targets: tuple[str, ...] = ("virtqueue", "kvmclock", "ghcb")
    #: the scenario's ``engine`` (:mod:`snpsim.engine`)
    engine: str = DEFAULT_ENGINE

    @classmethod
    def from_scenario(cls, scenario: Mapping[str, Any]) -> ExploreConfig:
        host = scenario.get("host", {}) or {}
        writers = tuple(sorted((host.get("writers", {}) or {}).keys()))
        for w in writers:
            if w not in WRITER_ACCESSORS and w not in KERNEL_WRITERS:
                known = ", ".join((*WRITER_ACCESSORS, *KERNEL_WRITERS))
                raise ConfigError(f"host.writers.{w}", f"not an actor the explorer knows (known: {known})")
        vms = scenario.get("vms", [{}]) or [{}]
        vm = vms[0] if isinstance(vms, list) and vms else {}
        vcpus = int(vm.get("vcpus", 1))
        if vcpus not in (1, 2):
            raise ConfigError("vms[0].vcpus", f"the explorer searches 1 or 2 vCPUs, got {vcpus}")
        on_vc = (vm.get("guest", {}) or {}).get("on_vc_404", "terminate")
        if on_vc not in ("terminate", "continue"):
            raise ConfigError("vms[0].guest.on_vc_404", f"expected terminate or continue, got {on_vc!r}")
        ex = scenario.get("explore", {}) or {}
        targets = tuple(ex.get("targets", cls.targets))
        for t in targets:
            if t not in TARGET_GFNS:
                raise ConfigError("explore.targets", f"unknown target {t!r} (known: {', '.join(TARGET_GFNS)})")
        name = scenario.get("engine", DEFAULT_ENGINE)
        engine(name if isinstance(name, str) else repr(name))  # a ConfigError for an unknown one
        return cls(writers or cls.writers, vcpus, on_vc, targets, name)


class World:
    """One host, one VM and its guest, in the state the boot leaves (targets shared and backed)."""

    def __init__(self, policy: Policy, cfg: ExploreConfig) -> None:
        self.cfg = cfg
        components = engine(cfg.engine)
        self.host = HostKernel(
            NFRAMES,
            policy,
            allocator=components.allocator,
            directmap=components.directmap,
            rmp=components.rmp,
            compactor=components.compactor,
        )
        self.counters = Counters()
        ram = np.ones(GUEST_PAGES, dtype=bool)
        self.qemu = Qemu(self.host, policy, ram, asid=1, counters=self.counters)
        self.driver = GuestDriver(self.qemu)
        self.driver.guest = SnpGuest(GUEST_PAGES, on_vc_404=cfg.on_vc_404)
        self.killed: str | None = None
        targets = {k: np.array([TARGET_GFNS[k]], dtype=np.int64) for k in cfg.targets}
        self.ram = GuestRamView("vm0", self.qemu, self.driver.guest.log, targets, self._kill)
        self.driver.guest.log.booted_ns = 0  # devices up: host I/O has begun
        self.host.guest_rams.append(self.ram)
        # launch: all RAM private and validated; then the boot makes the target pages shared and touches them
        self.driver.execute(Conversion(0, GUEST_PAGES, True))
        for g in self.target_gfns:
            self.driver.execute(Conversion(g, 1, False), Access(g, 1, False))

    def _kill(self, signal: str) -> None:
        self.killed = signal

    @property
    def target_gfns(self) -> list[int]:
        return sorted(TARGET_GFNS[k] for k in self.cfg.targets)

    # ------------------------------------------------------------------ actions
    def actions(self) -> list[tuple[str, Callable[[World], None]]]:
        """The enabled steps, in a fixed order: (label, apply)."""
        out: list[tuple[str, Callable[[World], None]]] = []
        priv = self.qemu.kvm.attrs.private
        for v in range(self.cfg.vcpus):
            for g in self.target_gfns:
                if priv[g]:
                    out.append((f"vcpu{v}: read gfn {g}", _guest(Access(g, 1, True, False), v)))
                    out.append((f"vcpu{v}: convert gfn {g} to shared", _guest(Conversion(g, 1, False), v)))
                else:
                    conv = (Conversion(g, 1, True), Access(g, 1, True, True))
                    out.append((f"vcpu{v}: convert gfn {g} to private", _guest(conv, v)))
        for w in self.cfg.writers:
            for name in WRITER_ACCESSORS.get(w, ()):
                acc = ACCESSORS[name]
                for kind in acc.targets:
                    if kind in self.cfg.targets:
                        g = TARGET_GFNS[kind]
                        out.append((f"{w}: {name} writes gfn {g} ({acc.path})", _write(acc, g)))
            if w == "page_zeroing":
                out.append(("page_zeroing: alloc + clear_highpage one page", _zero))
        return out

    # ------------------------------------------------------------------ outcomes and state
    def outcome(self) -> str | None:
        h = self.host
        if h.crashes:
            return "host-crash"
        if h.integrity_violations:
            return "guest-integrity"
        if self.driver.guest.terminated or self.killed:
            return "guest-terminated"
        if h.host_lost_write_count:
            return "host-data-loss"
        return None

    def key(self) -> bytes:
        """A hash of everything an action's result depends on."""
        q, h, n = self.qemu, self.host, GUEST_PAGES
        d = hashlib.blake2b(digest_size=16)
        d.update(np.ascontiguousarray(q.kvm.attrs.private[:n]).tobytes())
        d.update(np.ascontiguousarray(q.kvm.npt.level[:n]).tobytes())
        d.update(np.ascontiguousarray(q.kvm.npt.pfn[:n]).tobytes())
        d.update(np.ascontiguousarray(q.memory.pfn[0:n]).tobytes())
        if q.gmem is not None:
            d.update(np.ascontiguousarray(q.gmem.pfns(0, n)).tobytes())
        d.update(np.ascontiguousarray(self.driver.guest.validated[:n]).tobytes())
        frames = np.arange(h.nframes, dtype=np.int64)
        d.update(np.ascontiguousarray(h.rmp.assigned_mask(frames)).tobytes())
        d.update(np.ascontiguousarray(h.directmap.levels_of(frames)).tobytes())
        d.update(repr((h.buddy.obtainable(0), len(h.lru), h.host_efault_count, h.host_rmp_fault_count)).encode())
        d.update(repr((self.driver.guest.terminated, self.killed, self.outcome())).encode())
        return d.digest()


def _guest(events: Access | Conversion | tuple[Access | Conversion, ...], vcpu: int) -> Callable[[World], None]:
    evs = events if isinstance(events, tuple) else (events,)

    def apply(w: World) -> None:
        w.driver.execute(*evs, vcpu=vcpu)

    return apply


def _write(acc: Accessor, gfn: int) -> Callable[[World], None]:
    def apply(w: World) -> None:
        if w.ram in w.host.guest_rams and not w.killed:
            guest_write(w.host, w.ram, gfn, acc)

    return apply


def _zero(w: World) -> None:
    pfn = w.host.alloc(0, Owner.USER)
    if pfn is not None:
        w.host.lru[pfn] = None


# ---------------------------------------------------------------------------------------------------- search
class _Pickler(pickle.Pickler):
    """Pickles a world, keeping plain functions (the stateless clock lambdas) by reference."""

    def __init__(self, buf: io.BytesIO, table: list[object]) -> None:
        super().__init__(buf, protocol=pickle.HIGHEST_PROTOCOL)
        self.table = table

    def persistent_id(self, obj: object) -> int | None:
        if isinstance(obj, types.FunctionType):
            self.table.append(obj)
            return len(self.table) - 1
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, table: list[object]) -> None:
        super().__init__(io.BytesIO(data))
        self.table = table

    def persistent_load(self, pid: Any) -> object:
        return self.table[int(pid)]


def snapshot(world: World) -> tuple[bytes, list[object]]:
    """The world as bytes (a snapshot a child is made from, as ``copy.deepcopy`` would, faster)."""
    buf = io.BytesIO()
    table: list[object] = []
    _Pickler(buf, table).dump(world)
    return buf.getvalue(), table


def restore(snap: tuple[bytes, list[object]]) -> World:
    world: World = _Unpickler(snap[0], snap[1]).load()
    return world


def search(
    policy: Policy,
    cfg: ExploreConfig,
    *,
    preset: str = "",
    max_depth: int = DEFAULT_DEPTH,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Counterexample], ExploreStats]:
    """Breadth-first search from the booted world to ``max_depth`` steps: the first (shortest) counterexample of
    each outcome, in the order found, and the search's statistics. ``progress(depth, states)`` is called as it
    goes."""
    t0 = time.perf_counter()
    root = World(policy, cfg)
    seen = {root.key()}
    frontier: list[tuple[World, list[str]]] = [(root, [])]
    found: dict[str, Counterexample] = {}
    stats = ExploreStats(preset, states=1)
    for depth in range(1, max_depth + 1):
        nxt: list[tuple[World, list[str]]] = []
        for world, steps in frontier:
            snap = snapshot(world)
            for label, apply in world.actions():
                child = restore(snap)
                apply(child)
                k = child.key()
                if k in seen:
                    continue
                seen.add(k)
                stats.states += 1
                out = child.outcome()
                if out is not None:
                    if out not in found:
                        found[out] = Counterexample(preset, out, [*steps, label], stats.states)
                    continue
                nxt.append((child, [*steps, label]))
            if progress is not None:
                progress(depth, stats.states)
        stats.depth = depth
        frontier = nxt
        if not frontier or len(found) == len(OUTCOMES):
            break
    stats.seconds = time.perf_counter() - t0
    return list(found.values()), stats


def replay(policy: Policy, cfg: ExploreConfig, steps: list[str]) -> World:
    """Run a schedule (step labels as a counterexample prints them) on a fresh world; raises ConfigError for a
    step that is not enabled where it comes."""
    world = World(policy, cfg)
    for i, label in enumerate(steps):
        acts = dict(world.actions())
        if label not in acts:
            raise ConfigError(f"schedule[{i}]", f"step {label!r} is not enabled here")
        acts[label](world)
    return world


def _load(scenario: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(scenario, Mapping):
        return dict(scenario)
    import tomllib

    path = Path(scenario)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("scenario", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("scenario", f"{path}: {e}") from None


def _policies(data: Mapping[str, Any], names: list[str] | None) -> list[tuple[str, Policy]]:
    if names:
        bad = [n for n in names if n not in presets]
        if bad:
            raise ConfigError("presets", f"unknown preset {bad[0]!r} (presets: {', '.join(presets)})")
        return [(n, presets[n]) for n in names]
    pol = data.get("policy", "upstream")
    if isinstance(pol, str):
        if pol not in presets:
            raise ConfigError("policy", f"unknown preset {pol!r} (presets: {', '.join(presets)})")
        return [(pol, presets[pol])]
    from snpsim.policy import policy_label, resolve_policy

    return [(policy_label(pol), resolve_policy(pol))]


@dataclass
class ExploreResult:
    counterexamples: list[Counterexample] = field(default_factory=list)
    stats: list[ExploreStats] = field(default_factory=list)


def explore_all(
    scenario: Mapping[str, Any] | str | Path,
    presets_: list[str] | None = None,
    max_depth: int = DEFAULT_DEPTH,
    progress: Callable[[str, int, int], None] | None = None,
) -> ExploreResult:
    """:func:`search` for each preset (or the scenario's policy): counterexamples and statistics."""
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ConfigError("max_depth", f"expected an integer >= 1, got {max_depth!r}")
    data = _load(scenario)
    cfg = ExploreConfig.from_scenario(data)
    res = ExploreResult()
    for name, pol in _policies(data, presets_):
        cb = None if progress is None else (lambda d, s, _n=name: progress(_n, d, s))
        found, stats = search(pol, cfg, preset=name, max_depth=max_depth, progress=cb)
        res.counterexamples.extend(found)
        res.stats.append(stats)
    return res


def schedule_scenario(data: Mapping[str, Any], cx: Counterexample) -> dict[str, Any]:
    """The scenario that replays ``cx``: the explored scenario with its preset and the ``schedule``."""
    out = {k: v for k, v in data.items() if k not in ("schedule", "policy")}
    out["policy"] = cx.preset
    out["schedule"] = list(cx.steps)
    out["expect"] = cx.outcome
    return out


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A scenario dict as TOML (scalars, lists of scalars, tables, arrays of tables)."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[\n" + "".join(f"  {value(x)},\n" for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, Mapping) and not is_table_array(v)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += f"\n[{name}]\n" + to_toml(v, f"{name}.")
        elif is_table_array(v):
            for item in v:
                out += f"\n[[{name}]]\n" + to_toml(item, f"{name}.")
    return out


def run_schedule(data: Mapping[str, Any]) -> dict[str, int | float]:
    """Replay a scenario's ``schedule`` (what ``snpsim run`` does with one): the world's metrics and outcome."""
    steps = data.get("schedule")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ConfigError("schedule", "expected a list of step strings")
    cfg = ExploreConfig.from_scenario(data)
    [(_, pol)] = _policies(data, None)
    w = replay(pol, cfg, steps)
    summary: dict[str, int | float] = {**w.host.metrics(), **w.counters.as_dict()}
    summary["guest_terminated_count"] = int(w.driver.guest.terminated or w.killed is not None)
    summary["steps"] = len(steps)
    return summary


def outcome_of(data: Mapping[str, Any]) -> str | None:
    """The outcome a scenario's schedule reaches."""
    cfg = ExploreConfig.from_scenario(data)
    [(_, pol)] = _policies(data, None)
    return replay(pol, cfg, list(data["schedule"])).outcome()
