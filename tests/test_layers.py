"""The import graph keeps the layers of ``shared/DESIGN.md``: calls go one way, vmm -> kvm -> host -> hw.

Read with :mod:`ast` from the sources (every ``import`` and ``from ... import``, also those inside functions and
under ``TYPE_CHECKING``: a typing import is a dependency too). The rules (DESIGN.md "Layers", ARCH.md):

- a layer imports only itself, the layers below it and the neutral modules: ``vmm`` (QEMU) drives ``kvm`` only
  through its ioctls, KVM never imports the VMM; ``host`` knows no KVM; ``hw`` knows no software;
- only ``host`` (and ``hw`` itself) reaches ``snpsim.hw``: KVM reaches the RMP through the host's SNP functions,
  as KVM calls ``rmp_make_private``/``psmash`` of arch/x86/virt/svm/sev.c; ``guest``, ``vmm`` and ``kvm`` use the
  shared vocabulary :mod:`snpsim.arch`;
- the guest is a program on the other side of the hardware: it imports only :mod:`snpsim.arch`, its own package
  and the neutral utilities, and no layer imports it (only the engine feeds its events to QEMU);
- no layer and no neutral module imports the engine (runner, scenario, CLI, ...);
- of the engine, only the modules in :data:`HW_COSTS_USERS` import anything of ``snpsim.hw``, and only the cost
  model ``snpsim.hw.costs`` (the declarations of ns per operation), never the RMP;
- the fast engine (:data:`FAST_ENGINE`: ``snpsim.fast``, compiled versions of layer operations, and
  ``snpsim.engine``, which names the classes a host is built from) is not a layer: it may import any layer's
  modules, the RMP's included (``snpsim.fast.rmp`` subclasses ``snpsim.hw.rmp.Rmp``), and no layer or neutral
  module imports it (the runner and the explorer choose an engine and hand the classes to ``HostKernel``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: Layers from the bottom up: each may import only those at or below its own rank.
LAYERS = {"hw": 0, "host": 1, "kvm": 2, "vmm": 3}
#: Shared vocabulary and utilities that every layer may use (they import only each other).
NEUTRAL = {"arch", "errors", "units", "segments", "pfnmap", "policy", "metrics", "params"}
#: The guest's own allowed imports besides its package: the vocabulary and the utilities, nothing of the host side.
GUEST_ALLOWED = {"arch", "errors", "units", "segments", "pfnmap", "params"}
#: Engine modules that may import ``snpsim.hw.costs``, and why.
#: Modules of the fast engine and its chooser (see the module docstring).
FAST_ENGINE = ("snpsim.fast", "snpsim.engine")
HW_COSTS_USERS = {
    "snpsim.scenario": "validates a scenario's [costs] table into the CostModel the host is built with",
    "snpsim.report": "shows the cost model a run used, next to its defaults",
    "snpsim.calibrate": "fits the CostModel's fields within the ranges they declare",
}


def kind(module: str) -> str:
    """The layer of a module: ``hw``, ``host``, ``kvm``, ``vmm``, ``guest``, ``neutral``, ``fast`` or ``engine``."""
    parts = module.split(".")
    if parts[0] != "snpsim":
        return "external"
    if any(module == m or module.startswith(m + ".") for m in FAST_ENGINE):
        return "fast"
    if len(parts) == 1:
        return "engine"  # the package: snpsim.run() is the engine's entry point
    top = parts[1]
    if top in LAYERS or top == "guest":
        return top
    return "neutral" if top in NEUTRAL else "engine"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import in ``tree``; ``from a import b`` is ``a.b`` when that is a
    module of the tree (``from snpsim import hw`` imports ``snpsim.hw``), else ``a``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in known else target))
    return found


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (None if it may)."""
    src, dst = kind(importer), kind(imported)
    if dst == "external" or importer == imported:
        return None
    if src == "fast":
        return None
    if dst == "fast":
        return None if src == "engine" else f"the {src} layer imports the fast engine ({imported})"
    if src == "engine":
        if dst != "hw":
            return None
        if importer in HW_COSTS_USERS and (imported == "snpsim.hw.costs" or imported.startswith("snpsim.hw.costs.")):
            return None
        return "only host (and hw) reach snpsim.hw; the engine may use only snpsim.hw.costs, in HW_COSTS_USERS"
    if dst == "engine":
        return f"the {src} layer imports the engine ({imported})"
    if src == "neutral":
        return None if dst == "neutral" else f"a neutral module imports the {dst} layer"
    if src == "guest":
        if dst == "guest" or imported.split(".")[1] in GUEST_ALLOWED:
            return None
        return f"the guest imports only snpsim.arch, its package and neutral utilities, not {imported}"
    if dst == "guest":
        return f"the {src} layer imports the guest (it sees only snpsim.arch instructions)"
    if dst == "neutral" or dst == src:
        return None
    if dst == "hw" and src != "host":
        return f"{src} reaches snpsim.hw: only the host layer does (use snpsim.arch, or HostKernel's SNP functions)"
    if LAYERS[dst] > LAYERS[src]:
        return f"the {src} layer imports the {dst} layer above it (calls go vmm -> kvm -> host -> hw)"
    return None


def check(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Violations in ``{module: (source, is_package)}``, one ``module:line: imports X: why`` line each."""
    known = set(sources)
    out = []
    for module, (text, is_package) in sorted(sources.items()):
        for line, imported in imports(ast.parse(text), module, is_package, known):
            why = violation(module, imported)
            if why:
                out.append(f"{module}:{line}: imports {imported}: {why}")
    return out


def tree_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name(p, SRC): (p.read_text(), p.name == "__init__.py") for p in sorted((SRC / "snpsim").rglob("*.py"))
    }


def test_the_source_tree_keeps_the_layers() -> None:
    sources = tree_sources()
    assert {"snpsim.kvm.vm", "snpsim.vmm.qemu", "snpsim.host.kernel", "snpsim.hw.rmp"} <= set(sources)
    assert check(sources) == []


def test_engine_modules_allowed_the_cost_model_exist() -> None:
    sources = tree_sources()
    assert set(HW_COSTS_USERS) <= set(sources)


def _one(module: str, text: str, *others: str) -> list[str]:
    sources = {m: ("", m.count(".") == 1) for m in others}
    sources[module] = (text, False)
    return check(sources)


@pytest.mark.parametrize(
    ("module", "text", "expected"),
    [
        ("snpsim.kvm.vm", "from snpsim.vmm.qemu import Qemu", "the kvm layer imports the vmm layer above it"),
        ("snpsim.kvm.vm", "import snpsim.vmm", "the kvm layer imports the vmm layer above it"),
        ("snpsim.kvm.vm", "from snpsim.hw.rmp import Rmp", "kvm reaches snpsim.hw"),
        ("snpsim.kvm.vm", "from snpsim import hw", "kvm reaches snpsim.hw"),
        ("snpsim.kvm.vm", "from ..hw import Rmp", "kvm reaches snpsim.hw"),
        ("snpsim.vmm.qemu", "from snpsim.hw.types import PAGE_SIZE", "vmm reaches snpsim.hw"),
        ("snpsim.guest.linux", "from snpsim.hw import PageSize", "the guest imports only snpsim.arch"),
        ("snpsim.guest.linux", "from snpsim.policy import Policy", "the guest imports only snpsim.arch"),
        ("snpsim.guest.linux", "from snpsim.kvm.vm import KvmVm", "the guest imports only snpsim.arch"),
        ("snpsim.host.kernel", "from snpsim.kvm.sev import gmem_prepare", "the host layer imports the kvm layer"),
        ("snpsim.host.kernel", "from snpsim.guest.events import Access", "the host layer imports the guest"),
        ("snpsim.hw.rmp", "from snpsim.host import HostKernel", "the hw layer imports the host layer"),
        ("snpsim.host.kernel", "from snpsim.runner import Simulation", "the host layer imports the engine"),
        ("snpsim.policy", "from snpsim.host.kernel import HostKernel", "a neutral module imports the host layer"),
        ("snpsim.limits", "from snpsim.hw.types import PAGE_SIZE", "only host (and hw) reach snpsim.hw"),
        ("snpsim.scenario", "from snpsim.hw.rmp import Rmp", "only host (and hw) reach snpsim.hw"),
        ("snpsim.host.kernel", "from snpsim.fast import FastRmp", "the host layer imports the fast engine"),
        ("snpsim.hw.rmp", "from snpsim.engine import engine", "the hw layer imports the fast engine"),
        ("snpsim.segments", "from snpsim.fast.rmp import FastRmp", "the neutral layer imports the fast engine"),
        ("snpsim.kvm.vm", "def f():\n    from snpsim.vmm import qemu\n", "the kvm layer imports the vmm layer"),
        (
            "snpsim.kvm.vm",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from snpsim.vmm.qemu import Qemu\n",
            "the kvm layer imports the vmm layer",
        ),
    ],
)
def test_each_rule_catches_its_violation(module: str, text: str, expected: str) -> None:
    found = _one(module, text, "snpsim.hw", "snpsim.hw.rmp", "snpsim.vmm", "snpsim.vmm.qemu")
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    ("module", "text"),
    [
        ("snpsim.vmm.qemu", "from snpsim.kvm.vm import KvmVm\nfrom snpsim.host import HostKernel"),
        ("snpsim.kvm.vm", "from snpsim.host import HostKernel\nfrom snpsim.arch import PageSize"),
        ("snpsim.host.kernel", "from snpsim.hw.rmp import Rmp\nfrom snpsim.policy import Policy"),
        ("snpsim.guest.executor", "from snpsim.arch import Pvalidate\nfrom snpsim.guest.psc import build_requests"),
        ("snpsim.scenario", "from snpsim.hw.costs import CostModel\nfrom snpsim.guest.linux import LinuxGuestConfig"),
        ("snpsim.runner", "from snpsim.vmm.qemu import Qemu\nfrom snpsim.host import HostKernel"),
        ("snpsim.kvm.vm", "import numpy as np\nfrom .npt import NestedPageTable"),
        ("snpsim.fast.rmp", "from snpsim.hw.rmp import Rmp\nfrom snpsim.host.buddy import BuddyAllocator"),
        ("snpsim.engine", "from snpsim.hw.rmp import Rmp\nfrom snpsim.fast import FastRmp"),
        ("snpsim.runner", "from snpsim.engine import engine"),
    ],
)
def test_allowed_imports_pass(module: str, text: str) -> None:
    assert _one(module, text, "snpsim.hw", "snpsim.hw.rmp", "snpsim.vmm", "snpsim.vmm.qemu") == []
