"""kvm: the VM and its vCPUs: ioctls, memory attributes, guest_memfd, the nested page table, KVM_RUN and the exits,
and KVM's SEV-SNP hooks.

Models ``virt/kvm/kvm_main.c``, ``virt/kvm/guest_memfd.c``, ``arch/x86/kvm/mmu``, ``arch/x86/kvm/x86.c``
(``vcpu_run``), ``arch/x86/kvm/svm/svm.c`` and ``arch/x86/kvm/svm/sev.c`` (``shared/reference/linux-snp-host.md``
§4-§5).

Calls go one way: the VMM calls KVM (ioctls, ``KVM_RUN``); KVM returns exits (:mod:`snpsim.kvm.uapi`) and never
imports the VMM; it reaches the RMP only through the host's SNP functions (:class:`snpsim.host.HostKernel`:
``rmp_make_private``, ``psmash``, ``snp_lookup_rmpentry``, as arch/x86/virt/svm/sev.c exports them) and the CPU in
guest mode (:mod:`snpsim.host.svm`), never :mod:`snpsim.hw`.
"""
