"""snpsim: an executable model of how a KVM host manages the memory of confidential VMs (AMD SEV-SNP).

Layers (top calls down): guest -> vmm -> kvm -> host -> hw. See ``shared/DESIGN.md``.
"""

from __future__ import annotations

from snpsim.errors import ConfigError

__all__ = ["ConfigError"]
__version__ = "0.1.0"
