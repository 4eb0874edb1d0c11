"""vmm: a QEMU-like userspace VMM: RAM backing, ``kvm_convert_memory``, memory accounting.

Models QEMU ``accel/kvm/kvm-all.c`` and ``system/physmem.c`` (``shared/reference/guest-workloads.md`` §1, §6).
"""
