"""Evaluators for implementations in another framework than the engine's.

`Converted` wraps any evaluator (functional, cached, layer): the engine's arrays go in as
the framework's (DLPack, zero-copy), outputs and gradients come back as the engine's, and
anything that is not the framework's array where one is expected is a ContractError
naming what came back. `Autograd` is the binding of `backward: autograd`: forward is
recorded by the framework's autodiff and backward is its pullback, so the framework's
rules (a custom torch.autograd.Function, a jax.custom_vjp) are what the checks test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

from specgrad.bindings import ContractError, Evaluator, forward_only, materialized
from specgrad.errors import SpecError, did_you_mean
from specgrad.frameworks import Adapter, dotted
from specgrad.model import LayerBinding


@dataclass(frozen=True)
class Converted:
    """`inner` run on the framework's arrays; results in the engine's namespace `xp`."""

    inner: Evaluator
    adapter: Adapter
    xp: ModuleType

    def forward(self, tensors: Mapping[str, Any]) -> tuple[Any, Any]:
        raw, state = self.inner.forward({n: self.adapter.from_engine(a) for n, a in tensors.items()})
        return self.back(raw, "forward returned"), state

    def evaluate(self, tensors: Mapping[str, Any]) -> Any:
        raw = forward_only(self.inner, {n: self.adapter.from_engine(a) for n, a in tensors.items()})
        return self.back(raw, "forward returned")

    def backward(self, state: Any, grad_out: Any) -> Any:
        raw = self.inner.backward(state, self._native(grad_out))
        return self.back(materialized(raw), "backward returned")

    def jvp(self, tensors: Mapping[str, Any], tangents: Mapping[str, Any]) -> tuple[Any, list[Any]]:
        inner = self.inner
        if not isinstance(inner, Autograd):
            raise TypeError("only a backward: autograd binding has a jvp")
        native = {n: self.adapter.from_engine(a) for n, a in tensors.items()}
        moves = {n: self.adapter.from_engine(t) for n, t in tangents.items()}
        out, tangent = inner.jvp(native, moves)
        return self.back(out, "forward returned"), self.back(tangent, "forward mode returned")

    def _native(self, value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return type(value)(self._native(v) for v in value)
        return None if value is None else self.adapter.from_engine(value)

    def back(self, value: Any, what: str) -> Any:
        """The framework's arrays in `value` (nested in tuples, lists, dicts; None kept) as
        engine arrays."""
        if isinstance(value, (tuple, list)):
            return tuple(self.back(v, what) for v in value)
        if isinstance(value, Mapping):
            return {k: self.back(v, what) for k, v in value.items()}
        if value is None:
            return None
        if not self.adapter.is_native(value):
            kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
            raise ContractError(
                f"{what} a {kind} where a {self.adapter.array_type} was expected "
                f"(the implementation's framework is {self.adapter.name})"
            )
        try:
            return self.adapter.to_engine(value, self.xp)
        except Exception as exc:  # noqa: BLE001 - e.g. a dtype the engine has no name for
            dtype = getattr(value, "dtype", "?")
            raise ContractError(
                f"{what} a {self.adapter.array_type} of dtype {dtype} that cannot be handed back "
                f"to the engine ({type(exc).__name__}: {exc}); specgrad checks float16/32/64"
            ) from None


@dataclass(frozen=True)
class Autograd:
    """forward(*tensors, **attrs) in a framework with autodiff; backward is its VJP."""

    forward_fn: Callable[..., Any]
    adapter: Adapter
    order: tuple[str, ...]
    differentiable: tuple[str, ...]
    attrs: Mapping[str, Any]

    def forward(self, tensors: Mapping[str, Any]) -> tuple[Any, Any]:
        args = [tensors[n] for n in self.order]
        diff = [self.order.index(n) for n in self.differentiable]
        out, pullback = self.adapter.vjp(self.forward_fn, args, diff, self.attrs)
        return out, pullback

    def evaluate(self, tensors: Mapping[str, Any]) -> Any:
        """The outputs alone, nothing recorded (the differences' many calls)."""
        return self.adapter.compiled(self.forward_fn, self.attrs)(*[tensors[n] for n in self.order])

    def backward(self, state: Any, grad_out: Any) -> Any:
        pullback = state
        cotangents: Sequence[Any] = list(grad_out) if isinstance(grad_out, (tuple, list)) else [grad_out]
        grads = pullback(cotangents)
        return dict(zip(self.differentiable, grads, strict=True))

    def jvp(self, tensors: Mapping[str, Any], tangents: Mapping[str, Any]) -> tuple[Any, list[Any]]:
        args = [tensors[n] for n in self.order]
        moves = {self.order.index(n): t for n, t in tangents.items()}
        return self.adapter.jvp(self.forward_fn, args, moves, self.attrs)


#: attrs of a call that takes none: one object, so a compiled call is cached once (jax.jit)
_NO_ATTRS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class LayerAutograd:
    """A layer object (a torch.nn.Module, say) with `layer.backward: autograd`: a fresh
    instance per evaluation, called with the spec's parameter tensors in place of its own
    (the adapter's `call_layer`: torch.func.functional_call for torch), differentiated by
    the framework's autodiff."""

    factory: Callable[..., Any]
    binding: LayerBinding
    adapter: Adapter
    inputs: tuple[str, ...]
    order: tuple[str, ...]  # inputs, then parameters
    differentiable: tuple[str, ...]
    attrs: Mapping[str, Any]

    def _call(self, *tensors: Any) -> Any:
        named = dict(zip(self.order, tensors, strict=True))
        layer = self.factory(**self.binding.init)
        values = {w.value: named[n] for n, w in self.binding.params.items()}
        args = [named[n] for n in self.inputs]
        return self.adapter.call_layer(layer, self.binding.forward, values, args, self.attrs)

    def check_binding(self) -> None:
        """Located spec errors for parameter paths the layer does not have (a misspelled
        name would otherwise be a user-code error in every check)."""
        known = self.adapter.parameter_names(self.factory(**self.binding.init))
        if known is None:
            return
        for name, where in self.binding.params.items():
            if dotted(where.value) not in known:
                field = f"layer.params.{name}.value"
                raise SpecError.at(
                    self.binding.locations.get(field, self.binding.factory.location),
                    field,
                    f"the layer has no parameter or buffer '{dotted(where.value)}'"
                    f"{did_you_mean(dotted(where.value), known)} (it has: {', '.join(known) or 'none'})",
                )

    def forward(self, tensors: Mapping[str, Any]) -> tuple[Any, Any]:
        diff = [self.order.index(n) for n in self.differentiable]
        return self.adapter.vjp(self._call, [tensors[n] for n in self.order], diff, _NO_ATTRS)

    def evaluate(self, tensors: Mapping[str, Any]) -> Any:
        return self._call(*[tensors[n] for n in self.order])

    def backward(self, state: Any, grad_out: Any) -> Any:
        cotangents = list(grad_out) if isinstance(grad_out, (tuple, list)) else [grad_out]
        return dict(zip(self.differentiable, state(cotangents), strict=True))
