"""The error model of a gradient comparison: per-dtype steps, slack and rounding bounds.

An element passes when  |analytical - numerical| <= bound, with

    bound = atol + rtol * |numerical|                   the numerical method's slack
          + noise                                       rounding of the numerical gradient
          + rounding of the analytical gradient:
              measured   4 u_a (|n| + S) + min(2 r, sqrt(u_a) S)   with a float64 oracle
              modelled   ANALYTICAL_SIGMAS u_a (sqrt(m) T + S)     without one

- The step is h_j = c * eps^(1/3) * max(|x_j|, 1) (c = STEP_CONSTANT, eps the machine
  epsilon of the precision the differences are taken in): the total error of a central
  difference, truncation h^2 |f'''| / 6 plus rounding ~ u |f| / h, is smallest near
  h ~ u^(1/3); c sits a little under that, which favours layers with strong curvature
  and shrinks the band around a kink that a step straddles.
- `noise` is estimated per element by the engine, 4 u sqrt(sum_i g_i^2 (f_i(x+)^2 +
  f_i(x-)^2)) / (2h) over the outputs that moved (finite_diff.NOISE_SIGMAS): it grows
  with |f| and the layer's fan-out and needs no hand tuning.
- `rtol` bounds the truncation error relative to the gradient: at the default step
  h^2 |f'''| / (6 |f'|) <= rtol holds for curvature lengths |f'/f'''|^(1/2) down to
  h / sqrt(6 rtol) (6e-4 in float64); sharper elements are re-estimated at h/4 with
  Richardson extrapolation before any verdict. `atol` covers outputs that moved by less
  than their resolution (up to ~ u |f g| / h each); with float64 differences it scales
  down with the gradients (Tolerance.effective_atol).
- The analytical gradient, computed in its own precision (unit roundoff u_a), sums m
  terms (m: the outputs the element moves, its VJP's accumulation length) whose sizes add
  up to T = sum_i |g_i df_i/dx_j| (measured by the differences): its rounding is about
  u_a sqrt(m) T, plus the rounding of intermediates backward works with, which is taken
  relative to S, the larger of the case's largest gradient and |g| (a cancellation in
  1 - tanh^2, p - y or an attention row's dp - sum dp p leaves ~u |g| |v| behind however
  small the result). ANALYTICAL_SIGMAS = 16 allows for a few such roundings.
- `r` (gradient_check.measured_rounding) is |analytical - the same backward in float64 on
  the same values|: the rounding itself. Intermediates that backward cancels or absorbs
  can be a hundred times the largest gradient (an attention row's dp - sum dp p with
  scores of 40 loses ~100 u S in float32; gelu's derivative at x = -4.5 cancels two terms
  of 3e-4 and amplifies the rounding of 1 - tanh^2 by ~13), which no model of the final
  sum sees, while numpy sums float16 in float32, which the model's sqrt(m) T overstates
  a hundredfold for long reductions. A wrong formula is wrong alike in both precisions and
  adds nothing; the cap sqrt(u_a) S (2.4e-4 S in float32) keeps a bug in the
  low-precision path alone visible. The model stands in where there is no oracle.
For float16/float32 checks the differences come from the float64 oracle, so the first
three terms are float64's and the bound is dominated by the analytical gradient's own
precision: a factor 1.01 in a float32 backward breaks it about 6000-fold.

A spec that sets rtol or atol replaces the model: bound = atol + rtol |numerical| + noise
(and must give a `reason`).
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_DTYPES = ("float16", "float32", "float64")
INT_DTYPES = ("int32", "int64", "bool")

#: unit roundoff (half machine epsilon) of each float dtype
UNIT_ROUNDOFF = {"float16": 2.0**-11, "float32": 2.0**-24, "float64": 2.0**-53}

#: c in the default step h = c * eps^(1/3) * max(|x|, 1)
STEP_CONSTANT = 0.25

#: multiple of the first-order rounding estimate u_a (sqrt(m) T + S) of the analytical gradient
ANALYTICAL_SIGMAS = 16.0


def default_step(dtype: str) -> float:
    return STEP_CONSTANT * (2 * UNIT_ROUNDOFF[dtype]) ** (1 / 3)


@dataclass(frozen=True, slots=True)
class Tolerance:
    rtol: float
    atol: float
    epsilon: float
    reason: str | None = None
    atol_given: bool = False  # set by the spec: used as is, never scaled
    rtol_given: bool = False

    @property
    def hand_set(self) -> bool:
        """The spec's own bound replaces the error model."""
        return self.atol_given or self.rtol_given

    def merged(
        self, rtol: float | None, atol: float | None, epsilon: float | None, reason: str | None
    ) -> Tolerance:
        return Tolerance(
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            epsilon=self.epsilon if epsilon is None else epsilon,
            reason=reason,
            atol_given=atol is not None,
            rtol_given=rtol is not None,
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
    # resolution u|fg|/h = 1.1e-16 * 10 / 1.5e-6 ~ 7e-10, far inside atol
    "float64": Tolerance(rtol=1e-6, atol=1e-7, epsilon=default_step("float64")),
    # differences in float32 itself (the oracle refused): resolution 6e-8 * 10 / 1.2e-3 ~ 5e-4
    "float32": Tolerance(rtol=1e-3, atol=1e-3, epsilon=default_step("float32")),
    # resolution ~ 4.9e-4 * 3 / 2.5e-2 ~ 6e-2: float16 differences catch gross errors only
    "float16": Tolerance(rtol=1e-2, atol=6e-2, epsilon=default_step("float16")),
}
