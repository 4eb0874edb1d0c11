"""guest_memfd's gfn -> frame lookup: frame = folio base + offset in the folio, -1 where no folio is allocated."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from snpsim.host import HostKernel
from snpsim.kvm.gmem import GuestMemfd
from snpsim.policy import presets


@settings(max_examples=80, deadline=None)
@given(
    folio_pages=st.sampled_from([1, 512, 1 << 18]),
    nfolios=st.integers(1, 4),
    tail=st.integers(0, 300),
    allocated=st.sets(st.integers(0, 3)),
    data=st.data(),
)
def test_pfns_are_folio_base_plus_offset(
    folio_pages: int, nfolios: int, tail: int, allocated: set[int], data: st.DataObject
) -> None:
    npages = (nfolios - 1) * folio_pages + tail + 1
    gm = GuestMemfd(HostKernel(1 << 21, presets["upstream"]), npages, folio_pages, invalidate=lambda f: None)
    bases = {f: (7 + 3 * f) * folio_pages for f in allocated if f * folio_pages < npages}
    for f, base in bases.items():
        gm.folio_pfn[f] = base
    gfn = data.draw(st.integers(0, npages - 1))
    n = data.draw(st.integers(1, npages - gfn))
    want = [bases[g // folio_pages] + g % folio_pages if g // folio_pages in bases else -1 for g in range(gfn, gfn + n)]
    assert gm.pfns(gfn, n).tolist() == want
