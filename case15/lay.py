import numpy as np
import torch, jax, jax.numpy as jnp
from functools import partial

# log-softmax along an axis given as an int attr
def f_np(x, axis=-1):
    m = x.max(axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis, keepdims=True))
def b_np(g, x, axis=-1):
    y = f_np(x, axis)
    return g - np.exp(y) * g.sum(axis, keepdims=True)

# a jax team exports their custom_vjp directly; axis is nondiff
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def f_j(x, axis=-1):
    return jax.nn.log_softmax(x, axis=axis)
def _fwd(x, axis):
    y = jax.nn.log_softmax(x, axis=axis)
    return y, y
def _bwd(axis, y, g):
    return (g - jnp.exp(y) * g.sum(axis, keepdims=True),)
f_j.defvjp(_fwd, _bwd)

# custom_jvp with nondiff axis; jvp checked
@partial(jax.custom_jvp, nondiff_argnums=(1,))
def f_j2(x, axis=-1):
    return jax.nn.log_softmax(x, axis=axis)
@f_j2.defjvp
def _jvp(axis, p, t):
    (x,), (dx,) = p, t
    y = jax.nn.log_softmax(x, axis=axis)
    return y, dx - (jnp.exp(y) * dx).sum(axis, keepdims=True)

# jitted with static axis
@partial(jax.jit, static_argnames=("axis",))
def f_j3(x, axis=-1):
    return jax.nn.log_softmax(x, axis=axis)

# torch Function, old style, exported via a wrapper
class LS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis):
        y = torch.log_softmax(x, axis)
        ctx.save_for_backward(y); ctx.axis = axis
        return y
    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g - y.exp() * g.sum(ctx.axis, keepdim=True), None
def f_t(x, axis=-1):
    return LS.apply(x, axis)
