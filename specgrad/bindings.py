"""The calling conventions behind one interface the runner drives.

functional  forward(*tensors, **attrs) -> out;          backward(g, *tensors, **attrs) -> grads
cached      forward(*tensors, **attrs) -> (out, cache); backward(g, cache) -> grads
second      (a functional layer's NAME.second_order) forward = its backward on (*tensors,
            grad_out) -> grads; backward = double_backward(v, grad_out, *tensors, **attrs)
layer       obj = Class(**init); parameters set at their paths; obj.forward(*inputs, **attrs);
            obj.backward(g) -> input grads; parameter grads read from their paths
autograd    forward(*tensors, **attrs) -> out in a framework with autodiff; backward is
            the framework's VJP of it (specgrad.adapted)

Every evaluation of a layer object starts from a fresh instance, so caches and gradients
that real layers accumulate across calls never leak between evaluations.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from specgrad import frameworks
from specgrad.access import AccessPath
from specgrad.errors import SpecError, did_you_mean
from specgrad.imports import resolve
from specgrad.model import AUTOGRAD, AutogradBinding, FunctionBinding, LayerBinding, SecondOrderBinding, Spec


class ContractError(Exception):
    """The callable broke the calling contract (wrong return structure); a check failure."""


class Evaluator(Protocol):
    def forward(self, tensors: Mapping[str, Any]) -> tuple[Any, Any]:
        """Run forward; returns (raw outputs, state needed by backward)."""

    def backward(self, state: Any, grad_out: Any) -> Any:
        """Run backward on the state of one forward; returns the raw gradients."""


def raw_outputs_of(result: Any) -> tuple[Any, bool]:
    """(outputs tuple, was_tuple): forward may return one array or a tuple of arrays."""
    if isinstance(result, (tuple, list)):
        return tuple(result), True
    return (result,), False


@dataclass(frozen=True)
class FunctionEvaluator:
    forward_fn: Callable[..., Any]
    backward_fn: Callable[..., Any]
    cached: bool
    order: tuple[str, ...]
    attrs: Mapping[str, Any]

    def forward(self, tensors: Mapping[str, Any]) -> tuple[Any, Any]:
        args = [tensors[n] for n in self.order]
        result = self.forward_fn(*args, **self.attrs)
        if not self.cached:
            return result, args
        if not isinstance(result, (tuple, list)) or len(result) < 2:
            raise ContractError(
                f"cached-convention forward must return (out, cache) or (out1, ..., outK, cache), "
                f"got {_describe(result)}"
            )
        if len(result) == 2:
            return result[0], (result[1], False)
        return tuple(result[:-1]), (result[-1], True)  # CS231n's (next_h, next_c, cache)

    def backward(self, state: Any, grad_out: Any) -> Any:
        if not self.cached:
            return materialized(self.backward_fn(grad_out, *state, **self.attrs))
        cache, flat = state
        if flat:  # backward(dnext_h, dnext_c, cache), as its forward returned them
            return materialized(self.backward_fn(*grad_out, cache))
        return materialized(self.backward_fn(grad_out, cache))


@dataclass(frozen=True)
class SecondOrderEvaluator:
    """backward as a layer: its outputs are the gradients of the first-order tensors (one
    array, or a tuple in tensor order), its inputs those tensors and grad_out."""

    backward_fn: Callable[..., Any]
    double_fn: Callable[..., Any]
    binding: SecondOrderBinding
    attrs: Mapping[str, Any]

    def forward(self, tensors: Mapping[str, Any]) -> tuple[Any, Any]:
        args = [tensors[n] for n in self.binding.first_tensors]
        g = tensors["grad_out"]
        raw = materialized(self.backward_fn(g, *args, **self.attrs))
        names = self.binding.first_tensors
        grads = _match(raw, names, self.binding.first_grads)
        out = tuple(grads[n] for n in self.binding.first_grads)
        return (out if len(out) > 1 else out[0]), (args, g)

    def backward(self, state: Any, grad_out: Any) -> Any:
        args, g = state
        return materialized(self.double_fn(grad_out, g, *args, **self.attrs))


class LayerEvaluator:
    """Drives a layer object; learns on the first evaluation whether it needs a warm-up."""

    def __init__(
        self,
        factory: Callable[..., Any],
        binding: LayerBinding,
        inputs: tuple[str, ...],
        attrs: Mapping[str, Any],
    ) -> None:
        self.factory, self.binding, self.inputs, self.attrs = factory, binding, inputs, attrs
        self._warm_up: bool | None = None  # None until the first evaluation decides

    def check_binding(self, tensors: Mapping[str, Any]) -> None:
        """Located spec errors for a binding that cannot be right: a missing method, or a
        parameter path that exists neither after construction nor after one forward (a
        misspelled path would otherwise just add an attribute the layer never reads)."""
        layer = self.factory(**self.binding.init)
        for field in ("forward", "backward"):
            method = getattr(self.binding, field)
            if not callable(getattr(layer, method, None)):
                names = [n for n in dir(layer) if not n.startswith("_") and callable(getattr(layer, n, None))]
                raise self._error(
                    f"layer.{field}",
                    f"the layer has no method '{method}'"
                    f"{did_you_mean(method, names)} (it has: {', '.join(names)})",
                )
        try:
            out = self._call(layer, tensors)
        except Exception:  # noqa: BLE001 - a layer that needs its parameters set to run
            return
        for name, where in self.binding.params.items():
            field = f"layer.params.{name}.value"
            try:
                where.value.set(layer, where.value.get(layer))
            except LookupError as exc:
                hint = "is the path misspelled?" if "cannot read" in str(exc) else "it must be settable"
                raise self._error(field, f"{exc}, after construction and a forward call: {hint}") from None
        if self.binding.output is not None:
            out = self._probe_read(layer, self.binding.output, "layer.output")
        self._check_gradient_paths(layer, out)

    def _check_gradient_paths(self, layer: Any, out: Any) -> None:
        """After one backward (upstream ones, shaped like the output), every gradient path
        must resolve; a backward that raises is left to the checks to report."""
        outputs, was_tuple = raw_outputs_of(out)
        if not all(hasattr(o, "shape") for o in outputs):
            return
        ones = [_ones_like(o) for o in outputs]
        try:
            getattr(layer, self.binding.backward)(tuple(ones) if was_tuple else ones[0])
        except Exception:  # noqa: BLE001 - user code: the gradient checks report it
            return
        for name, where in self.binding.params.items():
            if where.grad is not None:
                self._probe_read(layer, where.grad, f"layer.params.{name}.grad")
        for name, path in (self.binding.input_grads or {}).items():
            self._probe_read(layer, path, f"layer.input_grads.{name}")

    def _probe_read(self, layer: Any, path: AccessPath, field: str) -> Any:
        try:
            return path.get(layer)
        except LookupError as exc:
            raise self._error(field, f"{exc}: is the path misspelled?") from None

    def _error(self, field: str, message: str) -> SpecError:
        return SpecError.at(self.binding.locations.get(field, self.binding.factory.location), field, message)

    def forward(self, tensors: Mapping[str, Any]) -> tuple[Any, Any]:
        """A fresh layer holding our parameter arrays by reference, then its forward.

        Parameters are set before the first forward. A layer that creates parameters lazily
        on its first forward and overwrote ours is, from then on, warmed up with one forward
        on a fresh instance before the parameters are set.
        """
        if self._warm_up is None:
            self.check_binding(tensors)
        layer = self.factory(**self.binding.init)
        if self._warm_up:
            self._call(layer, tensors)
            self._assign(layer, tensors, must_exist=True)
        else:
            self._assign(layer, tensors, must_exist=False)
        out = self._call(layer, tensors)
        if self.binding.output is not None:
            out = self._read(layer, self.binding.output, "the forward output")
        if self._warm_up is None:
            self._warm_up = not all(
                _holds(layer, w.value, tensors[n]) for n, w in self.binding.params.items()
            )
            if self._warm_up:
                return self.forward(tensors)
        return out, layer

    def backward(self, state: Any, grad_out: Any) -> Any:
        layer = state
        input_grads = materialized(getattr(layer, self.binding.backward)(grad_out))
        if self.binding.input_grads is not None:
            input_grads = {
                n: self._read(layer, p, f"the gradient of input '{n}'")
                for n, p in self.binding.input_grads.items()
            }
        params = {
            n: self._read(layer, path, f"the gradient of parameter '{n}'")
            for n, w in self.binding.params.items()
            if (path := w.grad) is not None
        }
        return input_grads, params

    @staticmethod
    def _read(layer: Any, path: AccessPath, what: str) -> Any:
        try:
            return path.get(layer)
        except LookupError as exc:
            raise ContractError(f"{what}: {exc}") from None

    def _call(self, layer: Any, tensors: Mapping[str, Any]) -> Any:
        return getattr(layer, self.binding.forward)(*[tensors[n] for n in self.inputs], **self.attrs)

    def _assign(self, layer: Any, tensors: Mapping[str, Any], must_exist: bool) -> None:
        for name, where in self.binding.params.items():
            try:
                if must_exist:
                    _same_shape(name, where.value.get(layer), tensors[name])
                where.value.set(layer, tensors[name])
            except LookupError as exc:
                if must_exist:
                    raise ContractError(f"parameter '{name}': {exc}") from None


def _same_shape(name: str, existing: Any, ours: Any) -> None:
    shape = getattr(existing, "shape", None)
    if shape is not None and tuple(shape) != tuple(ours.shape):
        raise ContractError(
            f"the layer made parameter '{name}' with shape {tuple(shape)}, "
            f"the spec declares {tuple(ours.shape)}"
        )


def _ones_like(array: Any) -> Any:
    """Ones shaped like a float output (of any framework: torch dtypes have no `kind`)."""
    kind = getattr(array.dtype, "kind", None)
    floating = kind in ("f", "c") if isinstance(kind, str) else "float" in str(array.dtype)
    return array * 0 + 1 if floating else None


def materialized(result: Any) -> Any:
    """A backward written as a generator runs its body here, inside the user-code call,
    not later while its gradients are read (after the mutation check)."""
    return tuple(result) if isinstance(result, Iterator) else result


def _holds(layer: Any, path: Any, array: Any) -> bool:
    try:
        return path.get(layer) is array
    except LookupError:
        return False


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def make_evaluator(spec: Spec, xp: ModuleType = np) -> Evaluator:
    """Import the spec's callables (located SpecError if that fails) and bind them. An
    implementation in another framework than the engine's (`xp`) gets its arrays through
    the framework's adapter (frameworks.Unavailable if that framework cannot be loaded)."""
    from specgrad.adapted import Autograd, Converted, LayerAutograd

    adapter = frameworks.adapter(spec.framework)
    # numpy-API code takes the engine's arrays as they are: numpy on the CPU, cupy on a GPU
    # (a layer that is not namespace generic gives its spec `device: cpu`)
    native = spec.framework == "numpy"
    if not native:
        adapter.load()
    binding = spec.binding
    if isinstance(binding, AutogradBinding):
        inner: Evaluator = Autograd(
            forward_fn=resolve(binding.forward, spec.path.parent),
            adapter=adapter,
            order=tuple(t.name for t in spec.tensors),
            differentiable=tuple(t.name for t in spec.tensors if t.grad),
            attrs=spec.attrs,
        )
    elif isinstance(binding, LayerBinding) and binding.backward == AUTOGRAD:
        factory = resolve(binding.factory, spec.path.parent)
        _check_signature(factory, binding)
        module = LayerAutograd(
            factory=factory,
            binding=binding,
            adapter=adapter,
            inputs=tuple(t.name for t in spec.inputs),
            order=(*(t.name for t in spec.inputs), *(t.name for t in spec.parameters)),
            differentiable=tuple(t.name for t in spec.tensors if t.grad),
            attrs=spec.attrs,
        )
        module.check_binding()
        inner = module
    else:
        inner = _bound(spec)
        if isinstance(binding, LayerBinding) and not native:
            _check_framework_layer(spec, binding, adapter)
    return inner if native else Converted(inner, adapter, xp)


def _check_framework_layer(spec: Spec, binding: LayerBinding, adapter: frameworks.Adapter) -> None:
    """A framework's module (a torch.nn.Module) keeps registered parameters that plain
    arrays cannot replace: with a hand-written backward its parameters could not be set."""
    try:
        layer = resolve(binding.factory, spec.path.parent)(**binding.init)
    except SpecError:
        raise
    except Exception:  # noqa: BLE001 - a constructor that fails is reported by the checks
        return
    if binding.params and adapter.parameter_names(layer) is not None:
        where = binding.locations.get("layer.backward", binding.factory.location)
        raise SpecError.at(
            where,
            "layer.backward",
            f"{type(layer).__name__} is a {adapter.name} module: its parameters are swapped in for a call "
            "only with layer.backward: autograd (the framework's autodiff, with any custom "
            "autograd.Function inside, gives the gradients)",
        )


def _bound(spec: Spec) -> Evaluator:
    folder = spec.path.parent
    binding = spec.binding
    if binding is None:
        raise TypeError(f"{spec.name} states a contract with several implementations: bind each one")
    if isinstance(binding, AutogradBinding):
        raise TypeError("an autograd binding is bound by make_evaluator")
    if isinstance(binding, FunctionBinding):
        return FunctionEvaluator(
            forward_fn=resolve(binding.forward, folder),
            backward_fn=resolve(binding.backward, folder),
            cached=binding.convention == "cached",
            order=tuple(t.name for t in spec.tensors),
            attrs=spec.attrs,
        )
    if isinstance(binding, SecondOrderBinding):
        return SecondOrderEvaluator(
            backward_fn=resolve(binding.first.backward, folder),
            double_fn=resolve(binding.double_backward, folder),
            binding=binding,
            attrs=spec.attrs,
        )
    factory = resolve(binding.factory, folder)
    _check_signature(factory, binding)
    return LayerEvaluator(
        factory=factory,
        binding=binding,
        inputs=tuple(t.name for t in spec.inputs),
        attrs=spec.attrs,
    )


def _check_signature(factory: Callable[..., Any], binding: LayerBinding) -> None:
    """`init` must fit the constructor: a located error now, not an ERROR per check later."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some extension types have none
        return
    try:
        signature.bind(**binding.init)
    except TypeError as exc:
        where = binding.locations.get("layer.init", binding.factory.location)
        raise SpecError.at(where, "layer.init", f"{binding.factory.target}{signature}: {exc}") from None


def forward_only(evaluator: Evaluator, tensors: Mapping[str, Any]) -> Any:
    """Forward's raw outputs alone, for the numerical differences' many calls: evaluators
    that record state for backward (autodiff) skip the recording where they can."""
    plain = getattr(evaluator, "evaluate", None)
    return plain(tensors) if plain is not None else evaluator.forward(tensors)[0]


def round_trip(
    evaluator: Evaluator, spec: Spec, tensors: Mapping[str, Any], grad_out: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One forward and the backward of its state: (outputs, gradients by tensor name)."""
    raw, state = evaluator.forward(tensors)
    return raw_outputs_of(raw)[0], grads_by_name(evaluator.backward(state, grad_out), spec)


def grads_by_name(raw: Any, spec: Spec) -> dict[str, Any]:
    """Map a backward's raw return value to {tensor name: gradient} for differentiable tensors.

    Accepts a tuple in tensor order (of the differentiable tensors, or of all tensors with
    None for the others), a dict by name, or a bare array when one gradient is expected.
    """
    if isinstance(spec.binding, LayerBinding) and spec.binding.backward != AUTOGRAD:
        input_raw, params = raw
        named = _match(input_raw, [t.name for t in spec.inputs], [t.name for t in spec.inputs if t.grad])
        named.update({n: params[n] for n in params if spec.tensor(n).grad})
        return named
    return _match(raw, [t.name for t in spec.tensors], [t.name for t in spec.tensors if t.grad])


def _match(raw: Any, names: Sequence[str], diff: Sequence[str]) -> dict[str, Any]:
    if not diff:
        return {}
    if isinstance(raw, Mapping):
        missing = [n for n in diff if n not in raw or raw[n] is None]
        extra = [k for k in raw if k not in diff and raw[k] is not None]
        if missing or extra:
            raise ContractError(_mismatch_text(list(raw), diff, missing, extra))
        return {n: raw[n] for n in diff}
    items = list(raw) if isinstance(raw, (tuple, list, Iterator)) else [raw]
    if raw is None:
        raise ContractError(f"backward returned None; expected gradients for {_names(diff)}")
    if len(items) == len(diff):
        return dict(zip(diff, items, strict=True))
    if len(items) == len(names) and all(items[i] is None for i, n in enumerate(names) if n not in diff):
        return {n: items[i] for i, n in enumerate(names) if n in diff}
    raise ContractError(
        f"backward returned {len(items)} gradient(s); expected {len(diff)} "
        f"(one per differentiable tensor: {_names(diff)})"
    )


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


def _mismatch_text(got: list[Any], diff: Sequence[str], missing: list[str], extra: list[Any]) -> str:
    parts = []
    if missing:
        parts.append(f"missing {_names(missing)}")
    if extra:
        parts.append(f"unexpected {_names([str(e) for e in extra])}")
    return f"backward returned a dict with keys {got}; expected {_names(diff)} ({'; '.join(parts)})"
