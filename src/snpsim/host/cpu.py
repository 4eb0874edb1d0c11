"""Host CPU time: who runs, and what each operation costs the thread that runs it.

The host's CPUs run threads: each VM's QEMU vCPU threads (inside ``KVM_RUN`` they also run the guest and KVM's exit
handlers), QEMU's main thread (VM creation, ioctls at set-up and teardown), and kernel threads (``kcompactd``,
``ksmd``, the tasks that churn page cache). Every operation the model performs charges its cost
(:class:`snpsim.hw.costs.CostModel`) to the thread running at that moment - the *current* :class:`CpuAccount` of the
:class:`~snpsim.host.kernel.HostKernel`, as Linux accounts CPU time to ``current``. The engine
(:mod:`snpsim.runner`) makes each thread's charged time pass in simulated time before the thread's next step, so
costs move the clock: a guest event completes after the costs of everything it caused, the events of one vCPU are
sequential, and different threads overlap.

Each account also keeps its total per operation (``by_op``: ``rmpupdate``, ``pvalidate_4k``, ``page_clear`` ...),
which :class:`snpsim.runner.Result` reports as host CPU time per kernel path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class CpuAccount:
    """The CPU time charged to one thread of execution (a vCPU thread, QEMU's main thread, a kernel thread)."""

    name: str
    #: charged but not yet turned into simulated time (the engine takes it before the thread's next step)
    pending_ns: int = 0
    total_ns: int = 0
    #: ns per operation, and how many times each was charged
    by_op: Counter[str] = field(default_factory=Counter)
    count_by_op: Counter[str] = field(default_factory=Counter)

    def charge(self, op: str, ns: int, count: int = 1) -> None:
        """``count`` operations ``op`` costing ``ns`` in all."""
        if ns:
            self.pending_ns += ns
            self.total_ns += ns
            self.by_op[op] += ns
        self.count_by_op[op] += count

    def take(self) -> int:
        """The charged time not yet spent, now spent."""
        ns, self.pending_ns = self.pending_ns, 0
        return ns
