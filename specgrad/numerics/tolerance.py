"""Per-dtype defaults for the finite-difference step and the comparison bound.

The check compares  |analytical - numerical| <= atol + rtol * |numerical|  per element,
with the numerical gradient from central differences computed in the check's own dtype.
Its error has two parts: truncation ~ h^2 |f'''| / 6, and rounding ~ u * S / h, where u is
the dtype's unit roundoff and S = sum_i |g_i| |f_i| over the outputs the element moves.
The rounding term is minimised near h ~ u^(1/3): 5e-6 (float64), 4e-3 (float32),
8e-2 (float16). The steps below sit at or a little under that optimum (a smaller step
favours layers with strong curvature), and atol sits above the rounding noise of an
O(1) layer with a few dozen coupled outputs at that step.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int32", "int64", "bool")

#: unit roundoff (half machine epsilon) of each float dtype
UNIT_ROUNDOFF = {"float16": 2.0**-11, "float32": 2.0**-24, "float64": 2.0**-53}


@dataclass(frozen=True, slots=True)
class Tolerance:
    rtol: float
    atol: float
    epsilon: float
    reason: str | None = None

    def merged(self, rtol: float | None, atol: float | None, epsilon: float | None,
               reason: str | None) -> Tolerance:
        return Tolerance(
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            epsilon=self.epsilon if epsilon is None else epsilon,
            reason=reason,
        )


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # noise ~ 1.1e-16 * S / 1e-6 ~ 1e-10 * S; truncation ~ 2e-13 |f'''|
    "float64": Tolerance(rtol=1e-5, atol=1e-6, epsilon=1e-6),
    # the seed's float32 rtol; its epsilon 1e-5 makes the noise ~ 6e-3 * S, so the step
    # moves to 1e-3 (noise ~ 6e-5 * S, truncation ~ 2e-7 |f'''|) and atol to 1e-3
    "float32": Tolerance(rtol=1e-2, atol=1e-3, epsilon=1e-3),
    # noise ~ 5e-4 * S / 3e-2 ~ 2e-2 * S; float16 checks catch gross errors only
    "float16": Tolerance(rtol=5e-2, atol=5e-2, epsilon=3e-2),
}
