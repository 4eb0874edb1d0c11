"""The hazard table of docs/hazards.md: a hostile guest against the host accessors, under every preset.

Run: ``python benchmarks/hazard_table.py [PRESET ...]``. One run per preset of the scenario below (a 256 MiB,
2-vCPU guest running ``hostile-convert`` at 2,000 conversions/s, with vhost, QEMU's device emulation and KVM's
paravirt writes enabled, for 3 s of simulated time, seed 1); prints a Markdown table of what the host and the
guest came to.
"""

from __future__ import annotations

import sys
from collections import Counter

import snpsim

SCENARIO = {
    "seed": 1,
    "host": {"memory": "2G", "writers": {"vhost": {}, "kvm_pv": {}, "qemu_device": {}}},
    "vms": [{"memory": "256M", "vcpus": 2, "workload": "hostile-convert", "params": {"rate": 2000}}],
    "duration": "3s",
}


def main() -> None:
    names = sys.argv[1:] or list(snpsim.presets)
    print("| preset | host crashes (path, context) | lost writes | -EFAULT | SIGBUS to QEMU | guest terminated (#VC) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        r = snpsim.run({**SCENARIO, "policy": name})
        s = r.summary
        crashes = Counter((c["path"].rsplit(":", 1)[-1], c["context"]) for c in r.crashes)
        shown = ", ".join(f"{n}× {p} ({ctx})" for (p, ctx), n in sorted(crashes.items())) or "0"
        vm = r.vms[0]
        term = "no"
        if vm.terminated_ns is not None:
            term = f"yes, at {vm.terminated_ns / 1e9:.3f} s"
        elif vm.signal is not None:
            term = f"killed ({vm.signal}) at {(vm.end_ns or 0) / 1e9:.3f} s"
        print(
            f"| {name} | {shown} | {s['host_lost_write_count']} | {s['host_efault_count']} | "
            f"{s['host_sigbus_count']} | {term} |"
        )


if __name__ == "__main__":
    main()
