"""The mutant corpus: deliberately wrong backward passes, one realistic mistake each. Every
one must be caught at default settings in float32 and float64, and the failing checks must
name exactly the tensors whose gradient is wrong (tests/e2e/test_mutants.py). Each reuses
the zoo's forward, so only the backward is under test."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from specgrad.zoo import activations, attention, embedding, norm, pool, softmax
from specgrad.zoo._xp import namespace


def linear_dw_missing_transpose(g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any]:
    """dW = x^T g instead of g^T x: the right shape only because W is square."""
    return g @ w, x.T @ g, g.sum(axis=0)


def linear_bias_wrong_axis(g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any]:
    """Bias gradient summed over the feature axis instead of the batch axis (N == out)."""
    return g @ w, g.T @ x, g.sum(axis=1)


def sigmoid_sign_error(g: Any, x: Any) -> Any:
    s = activations.sigmoid_forward(x)
    return -g * s * (1 - s)


def attention_missing_scale(g: Any, q: Any, k: Any, v: Any, causal: bool = False) -> tuple[Any, Any, Any]:
    """Forgets the 1/sqrt(d) of the scores in backward: dq and dk off by sqrt(d), dv right."""
    xp = namespace(q)
    p = attention._probabilities(q, k, causal)
    dv = xp.swapaxes(p, -1, -2) @ g
    dp = g @ xp.swapaxes(v, -1, -2)
    ds = p * (dp - xp.sum(dp * p, axis=-1, keepdims=True))
    return ds @ k, xp.swapaxes(ds, -1, -2) @ q, dv


def conv_wrong_at_borders(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    """Drops the input gradient in the one-pixel border (as if padding were cropped twice)."""
    from specgrad.zoo import conv

    dx, dw, db = conv.backward(g, x, w, b, stride=stride, padding=padding)
    dx = dx.copy()
    dx[:, :, 0, :] = 0
    dx[:, :, -1, :] = 0
    dx[:, :, :, 0] = 0
    dx[:, :, :, -1] = 0
    return dx, dw, db


def layernorm_dgamma_uses_x(g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """dgamma from the raw input instead of the normalised one: only gamma is wrong."""
    dx, _, dbeta = norm.layernorm_backward(g, x, gamma, beta, eps)
    return dx, (g * x).sum(axis=0), dbeta


def batchnorm_stats_as_constants(
    g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    """Treats the batch mean and variance as constants: dx = g * gamma / sigma."""
    _, dgamma, dbeta = norm.batchnorm_backward(g, x, gamma, beta, eps)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return g * gamma[None, :, None, None] / np.sqrt(var + eps), dgamma, dbeta


def softmax_missing_sum_term(g: Any, x: Any, axis: int = -1) -> Any:
    return softmax.softmax_forward(x, axis) * g


def cross_entropy_missing_batch_mean(g: Any, logits: Any, labels: Any) -> Any:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    one_hot = (labels[:, None] == np.arange(logits.shape[1])[None, :]).astype(logits.dtype)
    return (p - one_hot) * g


def maxpool_routes_to_window_corner(g: Any, x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    """Sends each window's gradient to its top-left element instead of its maximum."""
    s = stride or kernel
    dx = np.zeros_like(x)
    dx[:, :, ::s, ::s][:, :, : g.shape[2], : g.shape[3]] = g
    return dx


def embedding_last_write_wins(g: Any, indices: Any, weight: Any) -> Any:
    """Assigns instead of accumulating: a row looked up twice keeps one gradient."""
    dw = np.zeros_like(weight)
    dw[indices.reshape(-1)] = g.reshape(-1, weight.shape[1])
    return dw


def tanh_derivative_not_squared(g: Any, x: Any) -> Any:
    return g * (1 - np.tanh(x))


def gelu_missing_cubic_factor(g: Any, x: Any) -> Any:
    c, k = math.sqrt(2 / math.pi), 0.044715
    t = np.tanh(c * (x + k * x**3))
    return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + k * x * x))


def avgpool_divides_by_kernel_not_area(g: Any, x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    return pool.avgpool2d_backward(g, x, kernel, stride) * kernel


def dropout_forgets_scale(g: Any, x: Any, mask: Any, p: float = 0.5) -> Any:
    return g * mask


def log_softmax_elementwise_sum(g: Any, x: Any, axis: int = -1) -> Any:
    return g - np.exp(softmax.log_softmax_forward(x, axis)) * g


def batchnorm_cached_swapped_affine(g: Any, cache: Any) -> tuple[Any, Any, Any]:
    """dgamma and dbeta returned in each other's place."""
    from specgrad.zoo import cached

    dx, dgamma, dbeta = cached.batchnorm_backward(g, cache)
    return dx, dbeta, dgamma


class DenseBiasMean:
    """Layer object whose bias gradient averages over the batch instead of summing."""

    def __init__(self, in_features: int, out_features: int) -> None:
        from specgrad.zoo.layers import Dense

        self.inner = Dense(in_features, out_features)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.inner.parameters

    @property
    def gradients(self) -> dict[str, Any]:
        return self.inner.gradients

    def forward(self, x: Any) -> Any:
        return self.inner.forward(x)

    def backward(self, g: Any) -> Any:
        dx = self.inner.backward(g)
        self.inner.gradients["b"] = g.mean(axis=0)
        return dx


def mse_missing_factor_two(g: Any, pred: Any, target: Any) -> tuple[Any, Any]:
    """Forgets the 2 of d(x^2)/dx, in both gradients."""
    d = (pred - target) * (g / pred.size)
    return d, -d


def relu_gradient_at_negatives(g: Any, x: Any) -> Any:
    """Passes the gradient where x < 0 too (mask from the wrong side)."""
    return np.where(x < 0, g, 0 * g)


# --- linear ----------------------------------------------------------------------------


def linear_dw_mean_over_batch(g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any]:
    """dW averaged over the batch instead of summed (the loss's 1/N applied twice)."""
    return g @ w, g.T @ x / x.shape[0], g.sum(axis=0)


def linear_dx_factor_1_01(g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any]:
    """A stray factor 1.01 (a leftover smoothing constant) on the input gradient."""
    return 1.01 * (g @ w), g.T @ x, g.sum(axis=0)


def linear_one_element_wrong(g: Any, x: Any, w: Any, b: Any) -> tuple[Any, Any, Any]:
    """A flat loop that stops one short: the last weight's gradient is never written."""
    dw = g.T @ x
    dw.reshape(-1)[-1] = 0
    return g @ w, dw, g.sum(axis=0)


# --- convolution -------------------------------------------------------------------------


def _conv_dx_padded(g: Any, x: Any, w: Any, stride: int, padding: int, scatter: int) -> Any:
    """The padded input gradient of the zoo's conv, scattered with stride `scatter`."""
    from specgrad.zoo import conv

    oh, ow = conv._geometry(x, w, stride, padding)
    dxpad = np.zeros_like(np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))))
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            window = (
                slice(None),
                slice(None),
                slice(i, i + scatter * oh, scatter),
                slice(j, j + scatter * ow, scatter),
            )
            dxpad[window] += np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
    return dxpad


def conv_padding_off_by_one(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    """Crops the padded input gradient one pixel too early: dx shifted by one row and column."""
    from specgrad.zoo import conv

    p = max(padding - 1, 0)
    dx = _conv_dx_padded(g, x, w, stride, padding, stride)[:, :, p : p + x.shape[2], p : p + x.shape[3]]
    _, dw, db = conv.backward(g, x, w, b, stride=stride, padding=padding)
    return dx, dw, db


def conv_flipped_kernel(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    """Convolution vs correlation: dx computed with the kernel flipped."""
    from specgrad.zoo import conv

    _, dw, db = conv.backward(g, x, w, b, stride=stride, padding=padding)
    dx, _, _ = conv.backward(g, x, w[:, :, ::-1, ::-1].copy(), b, stride=stride, padding=padding)
    return dx, dw, db


def conv_ignores_stride_in_dx(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    """Scatters dx with unit stride: right for stride 1, wrong only on the stride-2 path."""
    from specgrad.zoo import conv

    p = padding
    dx = _conv_dx_padded(g, x, w, stride, padding, 1)[:, :, p : p + x.shape[2], p : p + x.shape[3]]
    _, dw, db = conv.backward(g, x, w, b, stride=stride, padding=padding)
    return dx, dw, db


def conv_bias_mean(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    """Bias gradient averaged over positions instead of summed."""
    from specgrad.zoo import conv

    dx, dw, _ = conv.backward(g, x, w, b, stride=stride, padding=padding)
    return dx, dw, g.mean(axis=(0, 2, 3))


def conv_dw_wrong_channel(g: Any, x: Any, w: Any, b: Any, stride: int = 1, padding: int = 0) -> Any:
    """A copy-paste slip: the last output channel's weight gradient reuses the first's."""
    from specgrad.zoo import conv

    dx, dw, db = conv.backward(g, x, w, b, stride=stride, padding=padding)
    dw[-1] = dw[0]
    return dx, dw, db


# --- activations -----------------------------------------------------------------------


def sigmoid_derivative_of_input(g: Any, x: Any) -> Any:
    """s(1 - s) evaluated at x instead of at s = sigmoid(x)."""
    return g * x * (1 - x)


def sigmoid_saturation_shortcut(g: Any, x: Any) -> Any:
    """Returns 0 for |x| > 3 as if saturated (sigmoid'(3) is still 0.045): a branch that
    unit-scale inputs rarely reach."""
    s = activations.sigmoid_forward(x)
    return np.where(np.abs(x) > 3, 0 * g, g * s * (1 - s))


def tanh_derivative_of_input(g: Any, x: Any) -> Any:
    """1 - x^2 instead of 1 - tanh(x)^2."""
    return g * (1 - x * x)


def gelu_missing_half(g: Any, x: Any) -> Any:
    c, k = math.sqrt(2 / math.pi), 0.044715
    t = np.tanh(c * (x + k * x**3))
    return g * (0.5 * (1 + t) + x * (1 - t * t) * c * (1 + 3 * k * x * x))


def leaky_relu_slope_dropped(g: Any, x: Any, negative_slope: float = 0.01) -> Any:
    """The relu backward reused: no gradient where x < 0."""
    return np.where(x > 0, g, 0 * g)


def leaky_relu_slope_times_input(g: Any, x: Any, negative_slope: float = 0.01) -> Any:
    """The negative branch's value (slope * x) used as its derivative."""
    return np.where(x > 0, g, g * negative_slope * x)


# --- softmax family ------------------------------------------------------------------------


def softmax_sum_over_wrong_axis(g: Any, x: Any, axis: int = -1) -> Any:
    s = softmax.softmax_forward(x, axis)
    return s * (g - np.sum(g * s, axis=0, keepdims=True))


def log_softmax_uniform_weights(g: Any, x: Any, axis: int = -1) -> Any:
    """Subtracts the mean of g instead of its softmax-weighted share."""
    return g - np.mean(g, axis=axis, keepdims=True)


def cross_entropy_forgets_one_hot(g: Any, logits: Any, labels: Any) -> Any:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return p * (g / logits.shape[0])


def cross_entropy_sign_error(g: Any, logits: Any, labels: Any) -> Any:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    one_hot = (labels[:, None] == np.arange(logits.shape[1])[None, :]).astype(logits.dtype)
    return (one_hot - p) * (g / logits.shape[0])


def cross_entropy_last_class_never_labelled(g: Any, logits: Any, labels: Any) -> Any:
    """The one-hot built over C - 1 classes: wrong only for rows labelled with the last class."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    one_hot = np.zeros_like(p)
    one_hot[:, :-1] = labels[:, None] == np.arange(logits.shape[1] - 1)[None, :]
    return (p - one_hot) * (g / logits.shape[0])


def attention_forgets_causal_mask(
    g: Any, q: Any, k: Any, v: Any, causal: bool = False
) -> tuple[Any, Any, Any]:
    """Backward recomputes the probabilities without the mask the forward applied."""
    return attention.backward(g, q, k, v, False)


def attention_softmax_missing_sum_term(
    g: Any, q: Any, k: Any, v: Any, causal: bool = False
) -> tuple[Any, Any, Any]:
    xp = namespace(q)
    p = attention._probabilities(q, k, causal)
    dv = xp.swapaxes(p, -1, -2) @ g
    ds = p * (g @ xp.swapaxes(v, -1, -2)) / math.sqrt(q.shape[-1])
    return ds @ k, xp.swapaxes(ds, -1, -2) @ q, dv


# --- normalisation -------------------------------------------------------------------------


def _bn_parts(x: Any, gamma: Any, eps: float) -> tuple[Any, Any, int]:
    xhat, inv = norm._normalise(x, (0, 2, 3), eps)
    return xhat, inv, x.shape[0] * x.shape[2] * x.shape[3]


def batchnorm_missing_variance_path(
    g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    """dx without the term through the batch variance."""
    xhat, inv, m = _bn_parts(x, gamma, eps)
    d = g * gamma[None, :, None, None]
    dx = inv / m * (m * d - d.sum(axis=(0, 2, 3), keepdims=True))
    return dx, (g * xhat).sum(axis=(0, 2, 3)), g.sum(axis=(0, 2, 3))


def batchnorm_missing_mean_path(
    g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    """dx without the term through the batch mean."""
    xhat, inv, m = _bn_parts(x, gamma, eps)
    d = g * gamma[None, :, None, None]
    dx = inv / m * (m * d - xhat * (d * xhat).sum(axis=(0, 2, 3), keepdims=True))
    return dx, (g * xhat).sum(axis=(0, 2, 3)), g.sum(axis=(0, 2, 3))


def batchnorm_unbiased_variance(
    g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    """Backward normalises with the unbiased variance (ddof=1) while forward used the biased."""
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    inv = 1 / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True, ddof=1) + eps)
    xhat = (x - mu) * inv
    dx = norm._normalise_backward(g * gamma[None, :, None, None], xhat, inv, (0, 2, 3))
    _, dgamma, dbeta = norm.batchnorm_backward(g, x, gamma, beta, eps)
    return dx, dgamma, dbeta


def batchnorm_dgamma_from_raw_input(
    g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    dx, _, dbeta = norm.batchnorm_backward(g, x, gamma, beta, eps)
    return dx, (g * x).sum(axis=(0, 2, 3)), dbeta


def layernorm_missing_mean_term(
    g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    xhat, inv = norm._normalise(x, (-1,), eps)
    d = g * gamma
    n = x.shape[-1]
    dx = inv / n * (n * d - xhat * (d * xhat).sum(axis=-1, keepdims=True))
    _, dgamma, dbeta = norm.layernorm_backward(g, x, gamma, beta, eps)
    return dx, dgamma, dbeta


def layernorm_gamma_applied_twice(
    g: Any, x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[Any, Any, Any]:
    dx = norm.layernorm_backward(g * gamma, x, gamma, beta, eps)[0]
    _, dgamma, dbeta = norm.layernorm_backward(g, x, gamma, beta, eps)
    return dx, dgamma, dbeta


def batchnorm_cached_forgets_gamma(g: Any, cache: Any) -> tuple[Any, Any, Any]:
    from specgrad.zoo import cached

    xhat, inv, _ = cache
    dx = norm._normalise_backward(g, xhat, inv, (0, 2, 3))
    _, dgamma, dbeta = cached.batchnorm_backward(g, cache)
    return dx, dgamma, dbeta


# --- pooling, embedding, losses ------------------------------------------------------------


def maxpool_ties_double_counted(g: Any, x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    """Sends the window's gradient to every element equal to its maximum: right without ties."""
    stacked, windows = pool._stack(x, kernel, stride or kernel)
    top = stacked.max(axis=-1)
    dx = np.zeros_like(x)
    for k, w in enumerate(windows):
        dx[w] += np.where(stacked[..., k] == top, g, 0).astype(x.dtype)
    return dx


def avgpool_assigns_overlapping_windows(g: Any, x: Any, kernel: int = 2, stride: int | None = None) -> Any:
    """Assigns instead of accumulating: where windows overlap (kernel > stride), one wins."""
    _, _, windows = pool._offsets(kernel, stride or kernel, x)
    dx = np.zeros_like(x)
    for w in windows:
        dx[w] = g / (kernel * kernel)
    return dx


def embedding_drops_last_row(g: Any, indices: Any, weight: Any) -> Any:
    """A loop over range(vocab - 1): the last row never gets its gradient."""
    dw = embedding.backward(g, indices, weight)
    dw[-1] = 0
    return dw


def mse_divides_by_batch_not_elements(g: Any, pred: Any, target: Any) -> tuple[Any, Any]:
    d = (pred - target) * (2 * g / pred.shape[0])
    return d, -d


def mse_target_gradient_sign(g: Any, pred: Any, target: Any) -> tuple[Any, Any]:
    d = (pred - target) * (2 * g / pred.size)
    return d, d


def dropout_uses_keep_probability(g: Any, x: Any, mask: Any, p: float = 0.5) -> Any:
    """Scales by 1/p instead of 1/(1 - p): wrong whenever p != 0.5."""
    return g * mask / p
