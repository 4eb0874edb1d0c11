"""The whole stack on both engines in lockstep: the same guest and host operations on two worlds, one built by
``engine("reference")`` and one by ``engine("fast")``, and after every step the whole state of the two compared
object by object (every attribute the reference's objects have, every array element by element, dicts in order):
host kernel, allocator, direct map, RMP, frame table, LRU, crashes, CPU accounts, QEMU, KVM's VM (attributes, NPT,
guest_memfd), the guest's view. Covers the fast classes that have no reference twin of their own
(:class:`snpsim.fast.FastHostKernel`, :class:`snpsim.fast.FastKvmVm`) as well as the compiled components.
"""

from __future__ import annotations

import enum
import types
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from snpsim.engine import ENGINES, engine
from snpsim.guest.events import Access, Conversion
from snpsim.host import Owner
from snpsim.metrics import Counters
from snpsim.policy import Policy, presets
from snpsim.runner import GuestDriver
from snpsim.vmm.qemu import Qemu

GUEST = 4 * 512
HOST = 16 * 512
HOLE = slice(3 * 512 + 40, 3 * 512 + 60)  # not RAM, like the PCI hole

_ATOMS = (int, float, str, bytes, bool, type(None), enum.Enum, np.generic)
_SKIP = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, memoryview, type)


def same_state(ref: Any, fast: Any, where: str = "world", seen: set[tuple[int, int]] | None = None) -> None:
    """``fast`` holds the state ``ref`` holds: recursively, every attribute of the reference's objects (the fast
    classes may keep more, e.g. caches), arrays by dtype and elements, containers in order. Functions, bound
    methods and memoryviews (views of arrays compared anyway) are skipped."""
    seen = set() if seen is None else seen
    key = (id(ref), id(fast))
    if key in seen:
        return
    seen.add(key)
    if isinstance(ref, np.ndarray) or isinstance(fast, np.ndarray):
        assert isinstance(ref, np.ndarray) and isinstance(fast, np.ndarray), where
        assert ref.dtype == fast.dtype and ref.shape == fast.shape, (where, ref.dtype, fast.dtype)
        assert np.array_equal(ref, fast), f"{where} differs"
    elif isinstance(ref, _ATOMS):
        assert ref == fast, (where, ref, fast)
    elif isinstance(ref, _SKIP):
        return
    elif isinstance(ref, dict):
        assert isinstance(fast, dict) and list(ref) == list(fast), f"{where}: keys differ"
        for k in ref:
            same_state(ref[k], fast[k], f"{where}[{k!r}]", seen)
    elif isinstance(ref, (list, tuple)):
        assert type(ref) is type(fast) and len(ref) == len(fast), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(ref, fast, strict=True)):
            same_state(x, y, f"{where}[{i}]", seen)
    elif isinstance(ref, (set, frozenset)):
        assert ref == fast, f"{where} differs"
    else:
        assert isinstance(fast, type(ref)), f"{where}: {type(fast).__name__} is not a {type(ref).__name__}"
        for name in _fields(ref):
            same_state(getattr(ref, name), getattr(fast, name), f"{where}.{name}", seen)


def _fields(obj: Any) -> list[str]:
    names = list(vars(obj)) if hasattr(obj, "__dict__") else []
    for cls in type(obj).__mro__:
        names += [s for s in getattr(cls, "__slots__", ()) if hasattr(obj, s) and s not in names]
    return names


class World:
    """A host and one VM built from engine ``name``'s classes, driven synchronously."""

    def __init__(self, name: str, policy: Policy) -> None:
        self.components = engine(name)
        self.policy = policy
        self.host = self.components.host(HOST, policy)
        self.counters = Counters()
        self.asid = 0
        self.user: dict[int, int] = {}
        self.new_vm()

    def new_vm(self) -> None:
        self.asid += 1
        ram = np.ones(GUEST, dtype=bool)
        ram[HOLE] = False
        self.qemu = Qemu(
            self.host, self.policy, ram, asid=self.asid, counters=self.counters, kvm_vm=self.components.kvm_vm
        )
        self.driver = GuestDriver(self.qemu)
        self.outcome(lambda: self.driver.execute(Conversion(0, GUEST, True)))  # as a launch: all RAM private

    def state(self) -> dict[str, Any]:
        """Everything the world holds, but the engine's name."""
        return {
            "host": self.host,
            "qemu": self.qemu,
            "guest": self.driver,
            "counters": self.counters,
            "user": self.user,
        }

    def outcome(self, call: Any) -> str | None:
        """Run ``call``: None, or the name of the error it raised (the host out of memory is an outcome)."""
        try:
            call()
        except MemoryError as e:
            return f"MemoryError: {e}"
        return None


gfn_st = st.integers(0, GUEST - 1)
npages_st = st.one_of(st.integers(1, 16), st.integers(17, 1200), st.sampled_from([512, 1024]))


class LockstepMachine(RuleBasedStateMachine):
    @initialize(name=st.sampled_from(sorted(presets)))
    def setup(self, name: str) -> None:
        self.name = name
        self.worlds = [World(e, presets[name]) for e in ("reference", "fast")]
        assert {w.components.name for w in self.worlds} == set(ENGINES)

    def _both(self, op: Any) -> None:
        results = [w.outcome(lambda w=w: op(w)) for w in self.worlds]
        assert results[0] == results[1], results

    @rule(gfn=gfn_st, n=npages_st, to_private=st.booleans(), huge=st.booleans(), validate=st.booleans())
    def convert(self, gfn: int, n: int, to_private: bool, huge: bool, validate: bool) -> None:
        ev = Conversion(gfn, min(n, GUEST - gfn), to_private, huge_ok=huge, validate=validate)
        self._both(lambda w: w.driver.execute(ev))

    @rule(gfn=gfn_st, n=npages_st, private=st.booleans(), write=st.booleans())
    def access(self, gfn: int, n: int, private: bool, write: bool) -> None:
        ev = Access(gfn, min(n, GUEST - gfn), private, write=write)
        self._both(lambda w: w.driver.execute(ev))

    @rule(order=st.sampled_from((0, 0, 1, 3, 9)))
    def host_alloc(self, order: int) -> None:
        def alloc(w: World) -> None:
            pfn = w.host.alloc(order, Owner.USER, path="test:alloc")
            if pfn is not None:
                w.user[pfn] = order

        self._both(alloc)

    @precondition(lambda self: bool(self.worlds[0].user))
    @rule(data=st.data())
    def host_free(self, data: st.DataObject) -> None:
        pfn = data.draw(st.sampled_from(sorted(self.worlds[0].user)), label="user pfn")
        self._both(lambda w: w.host.free(pfn, w.user.pop(pfn)))

    @rule(data=st.data())
    def host_writes(self, data: st.DataObject) -> None:
        """A kernel path writing many frames (page clearing, a copy): crashes and fixups in order. Frames drawn
        from the whole host and from the guest's assigned ones, more than the fast engine's loop threshold."""
        host = self.worlds[0].host
        assigned = np.flatnonzero(host.rmp.assigned_mask(np.arange(HOST, dtype=np.int64))).tolist()
        frame = st.one_of(st.integers(0, HOST - 1), *([st.sampled_from(assigned)] if assigned else []))
        pfns = np.array(data.draw(st.lists(frame, min_size=17, max_size=80), label="frames"), dtype=np.int64)
        self._both(lambda w: w.host.kernel_write_range(pfns, "test:writes"))

    @rule()
    def destroy_and_recreate(self) -> None:
        self._both(lambda w: (w.qemu.destroy(), w.new_vm()))

    @invariant()
    def same_worlds(self) -> None:
        if hasattr(self, "worlds"):
            same_state(*(w.state() for w in self.worlds))


LockstepMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestLockstep = LockstepMachine.TestCase


def test_same_state_finds_a_difference() -> None:
    """The comparison is not vacuous: one frame tag changed in one world is reported with its place."""
    a, b = World("reference", presets["upstream"]), World("fast", presets["upstream"])
    same_state(a.state(), b.state())
    b.host.frames.set_range(7, 1, Owner.USER)
    try:
        same_state(a.state(), b.state())
    except AssertionError as e:
        assert "frames" in str(e)
    else:  # pragma: no cover - the test's failure
        raise AssertionError("a changed frame tag went unnoticed")
