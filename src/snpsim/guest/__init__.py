"""guest: a Linux-like SEV-SNP guest: boot and runtime conversions, PSC requests, PVALIDATE ordering.

Models Linux ``arch/x86/coco/sev/core.c`` and the guest paths of ``shared/reference/guest-workloads.md`` §1-§2,
and OVMF's SNP paths. The guest is software running on a vCPU: its programs (:mod:`snpsim.guest.executor`) yield
the instructions of :mod:`snpsim.arch` (accesses, PVALIDATE, VMGEXIT with a Page State Change), which KVM runs; it
imports nothing of the host side.
"""
