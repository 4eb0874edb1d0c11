"""snpsim: an executable model of how a KVM host manages the memory of confidential VMs (AMD SEV-SNP).

Layers (top calls down): guest -> vmm -> kvm -> host -> hw. See ``shared/DESIGN.md``.

>>> import snpsim
>>> result = snpsim.run({"seed": 1, "policy": "upstream", "host": {"memory": "8G"},
...                      "vms": [{"memory": "1G", "vcpus": 2, "workload": "linux-boot"}], "duration": "1s"})
>>> result.summary["directmap_4k"] > 0
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snpsim.errors import ConfigError
from snpsim.policy import Policy, presets

if TYPE_CHECKING:
    from snpsim.runner import Result
    from snpsim.scenario import Scenario

__all__ = ["ConfigError", "Policy", "presets", "run"]
__version__ = "0.1.0"


def run(
    scenario: Mapping[str, Any] | str | Path | Scenario, *, progress: Callable[[float], None] | None = None
) -> Result:
    """Simulate a scenario (a dict, a TOML path or a loaded :class:`~snpsim.scenario.Scenario`)."""
    from snpsim.runner import Simulation
    from snpsim.scenario import Scenario, load

    loaded = scenario if isinstance(scenario, Scenario) else load(scenario)
    return Simulation(loaded, progress=progress).run()
