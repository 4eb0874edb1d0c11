"""``FastHostKernel.free_bulk`` (one compiled call, :meth:`snpsim.fast.FastBuddyAllocator.free_tagged`) against the
reference ``HostKernel.free_bulk``: the same frees, the same errors, and after an error the same, unchanged state.

The reference (``src/snpsim/host/kernel.py``, ``HostKernel.free_bulk``) checks the frame table first ("double free:
frame ... is already free"), then the allocator's ``free_bulk`` checks range, alignment, repeats and RAM
(``BuddyAllocator.free_bulk``: "block out of range", "pfn not aligned", "the same block is freed twice",
"is not RAM"). The compiled call takes only batches that pass every check and hands any other to the reference."""

from __future__ import annotations

import numpy as np
import pytest
from tests.fast.test_fast_stack import same_state

from snpsim.engine import engine
from snpsim.host import Owner
from snpsim.host.e820 import USABLE, E820Entry, HostMemoryMap
from snpsim.policy import presets

NFRAMES = 16 * 512
#: one RAM entry over all frames; the kernel keeps the first MiB (frames 0-255) from the allocator
MEMORY_MAP = HostMemoryMap((E820Entry(0, NFRAMES * 4096, USABLE),), None, NFRAMES * 4096)


def _hosts() -> list[object]:
    hosts = []
    for name in ("reference", "fast"):
        h = engine(name).host(NFRAMES, presets["upstream"], memory_map=MEMORY_MAP)
        h.held0 = h.alloc_bulk(0, 40, Owner.USER)  # type: ignore[attr-defined]
        h.held2 = h.alloc_bulk(2, 6, Owner.USER)  # type: ignore[attr-defined]
        hosts.append(h)
    return hosts


def _outcome(call: object) -> str | None:
    try:
        call()  # type: ignore[operator]
    except (ValueError, IndexError) as e:  # the reference reads the frame table before any range check
        return f"{type(e).__name__}: {e}"
    return None


def _a_free_frame(h: object) -> int:
    """The first frame of the allocator's RAM tagged free."""
    return int(np.flatnonzero(h.frames.array[256:] == Owner.FREE)[0]) + 256  # type: ignore[attr-defined]


CASES = {
    "all order-0, shuffled": (0, lambda h: h.held0[::-1].copy()),
    "some order-2": (2, lambda h: h.held2[1:4]),
    "a double free (a frame already free)": (0, lambda h: np.append(h.held0[:3], _a_free_frame(h))),
    "the same block twice": (0, lambda h: np.concatenate([h.held0[:5], h.held0[2:3]])),
    "misaligned for its order": (2, lambda h: h.held2[:2] + 1),
    "outside the frames": (0, lambda h: np.array([NFRAMES + 3], dtype=np.int64)),
    "the kernel's first MiB (not the allocator's RAM)": (0, lambda h: np.array([7], dtype=np.int64)),
    "nothing": (0, lambda h: np.zeros(0, dtype=np.int64)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_free_bulk_same_as_reference(case: str) -> None:
    order, pfns_of = CASES[case]
    ref, fast = _hosts()
    assert type(fast).__name__ == "FastHostKernel"
    same_state(ref, fast)
    outcomes = [_outcome(lambda h=h: h.free_bulk(pfns_of(h), order)) for h in (ref, fast)]
    assert outcomes[0] == outcomes[1]
    same_state(ref, fast)


def test_free_bulk_frees_and_tags() -> None:
    """A valid batch: every frame tagged free, and the allocator's free count up by the batch (hand count: 40
    order-0 frames)."""
    _, fast = _hosts()
    before = fast.buddy.free_frames  # type: ignore[attr-defined]
    fast.free_bulk(fast.held0, 0)  # type: ignore[attr-defined]
    assert (fast.frames.tags_of(fast.held0) == Owner.FREE).all()  # type: ignore[attr-defined]
    assert fast.buddy.free_frames == before + 40  # type: ignore[attr-defined]
