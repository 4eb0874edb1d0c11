"""Explorer throughput: states/s of the breadth-first interleaving search (snpsim.explorer), per preset.

Run: ``python benchmarks/bench_explore.py [DEPTH] [PRESET ...] [--engine fast|reference]`` (default depth 4, every
preset, the default engine). The actors are
vhost, QEMU's device emulation, KVM's paravirt writes and page zeroing racing one guest vCPU over the kvmclock,
GHCB and a virtqueue page. Prints, per preset, the states explored, the seconds, states/s and the outcomes found
(with their lengths). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import sys

from engine_arg import pop_engine

from snpsim.explorer import explore_all
from snpsim.policy import presets

SCENARIO = {
    "host": {"writers": {"vhost": {}, "qemu_device": {}, "kvm_pv": {}, "page_zeroing": {}}},
    "vms": [{"vcpus": 1}],
}


def main() -> None:
    argv = sys.argv[1:]
    scenario = dict(SCENARIO)
    if (name := pop_engine(argv)) is not None:
        scenario["engine"] = name
    depth = int(argv[0]) if argv else 4
    names = argv[1:] or list(presets)
    print("| preset | depth | states | seconds | states/s | outcomes (steps) |")
    print("|---|---|---|---|---|---|")
    total_states = 0
    total_s = 0.0
    for name in names:
        res = explore_all(scenario, [name], depth)
        st = res.stats[0]
        total_states += st.states
        total_s += st.seconds
        found = ", ".join(f"{c.outcome} ({len(c.steps)})" for c in res.counterexamples) or "none"
        print(f"| {name} | {st.depth} | {st.states} | {st.seconds:.2f} | {st.states / st.seconds:.0f} | {found} |")
    print(f"\nall: {total_states} states in {total_s:.1f} s = {total_states / total_s:.0f} states/s")


if __name__ == "__main__":
    main()
