"""How far apart two float32 computations of the same accumulated quantity may land.

Two kernels, two strategies or two instruction sets compute a sum in different orders (vector
widths, blocking, fused multiply-adds, an all-reduce's partial sums). Each float32 addition rounds
by up to half an ulp of its partial sum, so the two results differ by an amount set by the partial
sums, not by the element compared: an element that ends near zero after cancellation keeps the
rounding of the large partial sums that made it. A relative tolerance (or a fixed tiny atol) then
holds on the machine it was tuned on and fails on another one, with no kernel being wrong.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def float32_atol(magnitude, terms: int = 1) -> float:
  """The bound for `terms` accumulation steps whose partial sums are at most `magnitude` (an
  array: its largest |value|): each computation rounds by at most terms * eps / 2 * magnitude,
  so two computations are at most terms * eps * magnitude apart. Anything a wrong kernel does
  (a missing term, a term at the wrong place, a wrong factor) moves an element by a fraction of
  `magnitude` itself, which this stays far below as long as `terms` is well under 1 / eps."""
  return terms * EPS32 * float(np.max(np.abs(np.asarray(magnitude, np.float64))))


def assert_float32_close(got, want, *, magnitude, terms: int = 1, err_msg: str = ''):
  """`got` and `want` (elementwise) within `float32_atol(magnitude, terms)`."""
  np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0,
                             atol=float32_atol(magnitude, terms), err_msg=err_msg)
