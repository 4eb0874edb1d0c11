"""vmm: a QEMU-like userspace VMM: its RAM block, the vCPU exit loop, ``kvm_convert_memory``, memory accounting.

Models QEMU ``accel/kvm/kvm-all.c`` (``kvm_cpu_exec``, ``kvm_convert_memory``), ``target/i386/kvm/kvm.c``
(``kvm_handle_hc_map_gpa_range``) and ``system/physmem.c`` (``shared/reference/guest-workloads.md`` §1, §6).

Calls go one way: the VMM drives KVM only through its ioctls and the guest_memfd file (:mod:`snpsim.kvm`), and maps
its guest RAM as host memory (:mod:`snpsim.host.mm`); KVM never calls back into the VMM - it returns exits.
"""
