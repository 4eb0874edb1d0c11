"""The architectural types of AMD SEV-SNP, as :mod:`snpsim.hw` exports them.

They are defined in :mod:`snpsim.arch` (the vocabulary every layer shares: the hardware implements it, software
uses it); this module re-exports them for the hardware model and its public API (``shared/DESIGN.md``).
"""

from snpsim.arch import *  # noqa: F403
from snpsim.arch import __all__ as __all__
