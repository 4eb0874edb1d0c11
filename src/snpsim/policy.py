"""Host memory policies for confidential-VM private memory: the knobs and the named presets.

Every design option argued in the seed thread ("[PATCH Part2 v5 39/45] KVM: SVM: Introduce ops for the post gfn
map and unmap", 2021-2022; ``shared/reference/linux-snp-host.md`` §3, §6) is a combination of the knobs below;
a preset is only a set of knob values, and no code branches on a preset name (``shared/DESIGN.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from snpsim.errors import ConfigError

KNOB_VALUES: dict[str, tuple[Any, ...]] = {
    "private_backing": ("vmm", "gmem"),
    "private_granularity": ("4k", "2m", "1g"),
    "shared_backing": ("4k", "thp", "hugetlb-2m", "hugetlb-1g"),
    "discard_on_convert": (True, False),
    "directmap": ("keep", "split", "unmap", "unmap-nosplit", "bulk"),
    "directmap_restore": ("never", "on-release", "on-unregister"),
    "rmp_fault": ("oops", "fixup"),
}

#: Bytes of one page of each granularity / backing name.
GRANULE_BYTES = {"4k": 4096, "2m": 2 << 20, "1g": 1 << 30, "thp": 2 << 20, "hugetlb-2m": 2 << 20, "hugetlb-1g": 1 << 30}


@dataclass(frozen=True, slots=True)
class Policy:
    """One host memory policy: the value of every knob of ``shared/DESIGN.md``.

    - ``private_backing``: ``vmm`` (private memory is ordinary VMM memory, pre-UPM) or ``gmem`` (guest_memfd).
    - ``private_granularity``: guest_memfd folio size; with ``2m``/``1g`` a partial conversion never frees part of
      a folio.
    - ``shared_backing``: page size of the VMM's shared memory.
    - ``discard_on_convert``: the VMM frees the now-unused copy on conversion (impossible below the backing's
      page size, never done for hugetlb shared backing, as QEMU).
    - ``directmap``: what the host does to its direct map around private pages.
    - ``directmap_restore``: when 2M/1G direct-map mappings are rebuilt.
    - ``rmp_fault``: ``oops`` (a kernel-mode RMP #PF crashes the host) or ``fixup`` (make the page shared, retry).
    """

    private_backing: str = "gmem"
    private_granularity: str = "4k"
    shared_backing: str = "4k"
    discard_on_convert: bool = True
    directmap: str = "split"
    directmap_restore: str = "never"
    rmp_fault: str = "oops"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = KNOB_VALUES[f.name]
            if value not in allowed or (isinstance(value, bool) != isinstance(allowed[0], bool)):
                shown = ", ".join(str(a).lower() for a in allowed)
                raise ConfigError(f"policy.{f.name}", f"{value!r} is not one of: {shown}")
        if self.directmap == "unmap-nosplit" and self.private_granularity == "4k":
            raise ConfigError(
                "policy.directmap",
                "'unmap-nosplit' removes whole 2M/1G mappings only and needs private_granularity 2m or 1g",
            )
        if self.private_granularity != "4k" and self.private_backing != "gmem":
            raise ConfigError(
                "policy.private_granularity", "a private granularity above 4k needs private_backing 'gmem'"
            )
        if self.directmap_restore == "on-release" and self.private_backing != "gmem":
            raise ConfigError(
                "policy.directmap_restore", "'on-release' needs private_backing 'gmem' (the explicit release point)"
            )
        if self.directmap_restore != "never" and self.directmap == "keep":
            raise ConfigError(
                "policy.directmap_restore", "directmap 'keep' never changes the direct map, there is nothing to restore"
            )

    @property
    def private_page_bytes(self) -> int:
        return GRANULE_BYTES[self.private_granularity]

    @property
    def shared_page_bytes(self) -> int:
        return GRANULE_BYTES[self.shared_backing]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, field: str = "policy") -> Policy:
        """Build a policy from knob values; unknown knobs raise :class:`ConfigError` naming them."""
        if not isinstance(data, Mapping):
            raise ConfigError(field, f"expected a preset name or a table of knobs, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"preset"})
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}", f"unknown knob (knobs: {', '.join(sorted(known))})")
        base: dict[str, Any] = {}
        if "preset" in data:
            base = presets_by_name(data["preset"], field=f"{field}.preset").as_dict()
        base.update({k: v for k, v in data.items() if k != "preset"})
        return cls(**base)


def _preset(pb: str, pg: str, sb: str, discard: bool, dm: str, restore: str, fault: str) -> Policy:
    return Policy(pb, pg, sb, discard, dm, restore, fault)


#: The seed thread's options (DESIGN.md "Presets"). Knob order: private_backing, private_granularity,
#: shared_backing, discard_on_convert, directmap, directmap_restore, rmp_fault.
presets: dict[str, Policy] = {
    "fixup": _preset("vmm", "4k", "4k", True, "keep", "never", "fixup"),
    "unmap": _preset("vmm", "4k", "4k", True, "unmap", "never", "oops"),
    "bulk": _preset("vmm", "4k", "4k", True, "bulk", "on-unregister", "oops"),
    "upm": _preset("gmem", "4k", "4k", True, "unmap", "on-release", "oops"),
    "upm-nosplit": _preset("gmem", "2m", "4k", True, "unmap-nosplit", "on-release", "oops"),
    "hugetlb": _preset("gmem", "2m", "hugetlb-2m", True, "unmap-nosplit", "on-release", "oops"),
    "upstream": _preset("gmem", "4k", "4k", True, "split", "never", "oops"),
}


def presets_by_name(name: object, *, field: str = "policy") -> Policy:
    if not isinstance(name, str) or name not in presets:
        raise ConfigError(field, f"unknown preset {name!r} (presets: {', '.join(presets)})")
    return presets[name]


def resolve_policy(value: object, *, field: str = "policy") -> Policy:
    """A preset name, a knob table (optionally with ``preset`` as a base) or a :class:`Policy`."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, str):
        return presets_by_name(value, field=field)
    if isinstance(value, Mapping):
        return Policy.from_mapping(value, field=field)
    raise ConfigError(field, f"expected a preset name or a table of knobs, got {type(value).__name__}")


def policy_label(value: object, *, field: str = "policy") -> str:
    """A short, readable and filesystem-safe name for a policy, for tables, result folders and reports.

    A preset name stays itself; a policy equal to a preset is that preset's name; any other is the nearest preset
    (its ``preset`` base if the table names one, else the preset differing in the fewest knobs, the first of them
    in preset order) followed by the knobs that differ, in knob order: ``{"preset": "upm", "rmp_fault": "fixup"}``
    -> ``"upm+rmp_fault=fixup"``. Only letters, digits and ``+=._-`` appear (presets and knob values are made of
    those), so the label is also a folder name on Linux, macOS and Windows."""
    policy = resolve_policy(value, field=field)
    if isinstance(value, str):
        return value
    for name, preset in presets.items():
        if preset == policy:
            return name
    knobs = policy.as_dict()

    def differing(name: str) -> list[str]:
        base = presets[name].as_dict()
        return [k for k in knobs if knobs[k] != base[k]]

    base_name = value.get("preset") if isinstance(value, Mapping) else None
    if not isinstance(base_name, str) or base_name not in presets:
        base_name = min(presets, key=lambda n: len(differing(n)))
    return "+".join([base_name, *(f"{k}={str(knobs[k]).lower()}" for k in differing(base_name))])
