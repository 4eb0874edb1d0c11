"""guest: a Linux-like SEV-SNP guest: boot and runtime conversions, PSC requests, PVALIDATE ordering.

Models Linux ``arch/x86/coco/sev/core.c`` and the guest paths of ``shared/reference/guest-workloads.md`` §1-§2.
"""
