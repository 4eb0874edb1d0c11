"""kvm: memory attributes, guest_memfd, the nested page table and KVM's SEV-SNP hooks.

Models ``virt/kvm/guest_memfd.c``, ``arch/x86/kvm/mmu`` and ``arch/x86/kvm/svm/sev.c``
(``shared/reference/linux-snp-host.md`` §4-§5).
"""
