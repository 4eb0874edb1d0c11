"""The boot's guest operations in the order the guest issues them, seen through the executor with a recording VMM.

Expected sequences come from the code paths quoted in each test (arch/x86/mm/mem_encrypt_amd.c,
arch/x86/coco/sev/core.c early_set_pages_state(), edk2 SnpPageStateChangeInternal.c), not from running the model.
"""

from __future__ import annotations

from typing import Any

from snpsim.arch import PscResult, Pvalidate, PvalidateResult, RmpStatus, Touch, Vmgexit
from snpsim.guest.events import Timed
from snpsim.guest.executor import SnpGuest
from snpsim.guest.linux import LinuxGuestConfig, boot_events, guest_layout

GIB = 1 << 30


class RecordingVmm:
    """The instructions SnpGuest's program executes, logged (each answered as a host that lets everything pass)."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def run(self, program: Any) -> None:
        result: Any = None
        try:
            instr = next(program)
            while True:
                result = self.execute(instr)
                instr = program.send(result)
        except StopIteration:
            pass

    def execute(self, instr: Any) -> Any:
        if isinstance(instr, Vmgexit):
            req = instr.request
            self.log.append(("psc", req.protocol.value, req.entries[0].to_private, len(req.entries), req.gfn))
            return PscResult(0)
        if isinstance(instr, Pvalidate):
            self.log.append(("pvalidate", instr.gfn, instr.npages, int(instr.size), instr.validate))
            return PvalidateResult(instr.npages, RmpStatus.SUCCESS, instr.npages)
        if isinstance(instr, Touch):
            self.log.append(("access", instr.gfn, instr.npages, instr.private, instr.write))
        return None


def run(cfg: LinuxGuestConfig, events: list[Timed]) -> RecordingVmm:
    vmm = RecordingVmm()
    vmm.run(SnpGuest(cfg.end_gfn).program(events))
    return vmm


def test_ghcb_setup_is_three_msr_pscs_and_rescind_validate_rescind() -> None:
    c = LinuxGuestConfig(4 * GIB, 4)
    g = guest_layout(c).ghcbs[0]
    vmm = run(c, boot_events(c))
    ops = [op for op in vmm.log if op[1] == g or op[-1] == g]
    # The GHCB page was accepted (validated) with its memblock allocation; then init_ghcb() ->
    # early_set_memory_decrypted() -> __set_clr_pte_enc() (PG_LEVEL_4K after the split):
    #   sme_early_decrypt() -> __sme_early_enc_dec(): "snp_memcpy(sme_early_buffer, src, len, paddr, enc);" (a read
    #   through early_memremap_encrypted_wp), "snp_memcpy(dst, sme_early_buffer, len, paddr, !enc);":
    #     early_snp_set_memory_shared(): "if (op == SNP_PAGE_STATE_SHARED) pvalidate_4k_page(vaddr, paddr, false);"
    #       then "sev_es_wr_ghcb_msr(GHCB_MSR_PSC_REQ_GFN(...)); VMGEXIT();"
    #     memcpy(dst, ...) through early_memremap_decrypted
    #     early_snp_set_memory_private(): the MSR PSC, then "pvalidate_4k_page(vaddr, paddr, true);"
    #   "early_snp_set_memory_shared((unsigned long)__va(d.pa), d.pa, 1);" before set_pte_enc_mask()
    # then "memset(&data->ghcb_page, 0, sizeof(data->ghcb_page));"
    assert ops[-9:] == [
        ("access", g, 1, True, False),
        ("pvalidate", g, 1, 0, False),
        ("psc", "msr", False, 1, g),
        ("access", g, 1, False, True),
        ("psc", "msr", True, 1, g),
        ("pvalidate", g, 1, 0, True),
        ("pvalidate", g, 1, 0, False),
        ("psc", "msr", False, 1, g),
        ("access", g, 1, False, True),
    ]
    # three MSR-protocol page-state changes per GHCB page and per per-CPU decrypted page, 512 for .bss..decrypted
    msr = [op for op in vmm.log if op[0] == "psc" and op[1] == "msr"]
    assert len(msr) == 512 + 3 * 4 + 3 * 4


def test_ovmf_prevalidation_sends_253_entry_descriptors_then_validates() -> None:
    c = LinuxGuestConfig(4 * GIB, 4)
    vmm = run(c, boot_events(c)[:1])
    # InternalSetPageState(0, 2 GiB, SevSnpPagePrivate, UseLargeEntry=TRUE): 1024 2M entries, "i <
    # SNP_PAGE_STATE_MAX_ENTRY" per VMGEXIT -> 253, 253, 253, 253, 12; "if (State == SevSnpPagePrivate)
    # PvalidateRange (...)" after the VMGEXITs, at the entries' 2M size
    assert vmm.log[:5] == [("psc", "ghcb", True, n, 512 * 253 * i) for i, n in enumerate([253] * 4 + [12])]
    assert vmm.log[5:] == [("pvalidate", 0, 524288, 1, True)]


def test_ovmf_ghcb_pages_are_shared_one_descriptor_each() -> None:
    c = LinuxGuestConfig(4 * GIB, 4)
    ev = boot_events(c)
    first_ovmf_ghcb = next(i for i, t in enumerate(ev) if t.event.what == "ovmf-ghcb")
    vmm = run(c, ev[: first_ovmf_ghcb + 2])
    g = guest_layout(c).ovmf_ghcbs[0]
    # MemEncryptSevClearPageEncMask(..., 1 page) -> SetMemoryEncDec -> InternalSetPageState(..., SevSnpPageShared,
    # FALSE): "if (State == SevSnpPageShared) PvalidateRange (...)" (rescind, 4K) before the one-entry VMGEXIT
    assert vmm.log[-3:] == [("pvalidate", g, 1, 0, False), ("psc", "ghcb", False, 1, g), ("access", g, 1, False, True)]
