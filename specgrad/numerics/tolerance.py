"""Per-dtype defaults for the finite-difference step and the comparison bound.

An element passes when  |analytical - numerical| <= atol + rtol * |numerical| + noise,
with the numerical gradient from central differences in the check's own dtype. Its error:
- truncation ~ h^2 |f'''| / 6;
- rounding of the outputs that x_j moves: `noise`, estimated per element by the engine
  as 4 u sqrt(sum_i g_i^2 (f_i(x+)^2 + f_i(x-)^2)) / (2h) over the outputs that changed
  (finite_diff.NOISE_SIGMAS), so it grows with the layer's fan-out and needs no hand tuning;
- resolution: an output whose true change is below half its ulp does not move at all and
  so is not in that estimate; each such output can hide up to ~ u |f_i g_i| / h. atol is
  sized to cover that for O(1) outputs (|f g| up to ~10), and nothing much larger, so a
  real gradient bug, whose error is a fraction of the gradient itself, still shows.
The rounding term is minimised near h ~ u^(1/3): 5e-6 (float64), 4e-3 (float32),
8e-2 (float16). The steps sit at or a little under that optimum: a smaller step favours
layers with strong curvature and shrinks the band around a kink that a step straddles.
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
    atol_given: bool = False  # set by the spec: used as is, never scaled

    def merged(
        self, rtol: float | None, atol: float | None, epsilon: float | None, reason: str | None
    ) -> Tolerance:
        return Tolerance(
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            epsilon=self.epsilon if epsilon is None else epsilon,
            reason=reason,
            atol_given=atol is not None,
        )

    def effective_atol(self, scale: float) -> float:
        """The default atol is a floor for gradients of order one. For a tensor whose
        gradients are all smaller it scales down with the largest of them (rtol * scale),
        to at most 1/1000 of itself, so that multiplying a loss by a small constant does
        not make its check blind. Used only with float64-accurate numerical gradients,
        whose own error is negligible at that level; a spec's atol is used as given."""
        if self.atol_given:
            return self.atol
        return max(min(self.atol, self.rtol * scale), self.atol * 1e-3)


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # resolution u|fg|/h = 1.1e-16 * 10 / 1e-6 ~ 1e-9; truncation ~ 2e-13 |f'''|
    "float64": Tolerance(rtol=1e-5, atol=1e-7, epsilon=1e-6),
    # the seed's float32 rtol; the seed's epsilon 1e-5 would make the resolution term
    # 6e-8 * 10 / 1e-5 ~ 6e-2, so the step is 1e-3 (resolution ~ 6e-4, truncation
    # ~ 2e-7 |f'''|) and atol 1e-3 instead of the seed's 1e-5
    "float32": Tolerance(rtol=1e-2, atol=1e-3, epsilon=1e-3),
    # resolution ~ 4.9e-4 * 3 / 3e-2 ~ 5e-2: float16 checks catch gross errors only
    "float16": Tolerance(rtol=5e-2, atol=5e-2, epsilon=3e-2),
}
