"""The frameworks an implementation may be written in, behind one small protocol.

The engine computes in its own array namespace (`backends`: numpy on the CPU); an
implementation written in another framework gets its arrays through that framework's
adapter: in over DLPack (zero-copy: torch and jax see the engine's own buffers, so an
implementation that writes into its inputs is caught by the mutation contract), results
back into the engine's namespace the same way. Where the framework has autodiff, the
adapter also derives a VJP (and a JVP, where it has forward mode) from it, so that
`backward: autograd` checks the framework's rules, a custom `torch.autograd.Function` or a
`jax.custom_vjp` among them.

A framework is imported when the first check that needs it runs, never before:
`import specgrad`, `lint` and `list` import none. A missing framework is not an error of
the spec: that implementation's checks are skipped with the reason (`Unavailable`).

Third parties add a framework with an entry point in the group `specgrad.frameworks`
(`name = "package.module:AdapterClass"`): a class (or factory) giving an `Adapter`.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from importlib import metadata
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from specgrad.errors import did_you_mean

ENTRY_POINT_GROUP = "specgrad.frameworks"

#: the dtypes that cross between the engine and a framework, by their numpy names
DTYPES = ("float16", "float32", "float64", "int32", "int64", "bool")

#: (outputs, pullback): pullback takes one cotangent per output (None where an output is not
#: differentiable) and returns one gradient per differentiable argument
Pullback = Callable[[Sequence[Any]], list[Any]]


class Unavailable(Exception):
    """The framework cannot be used here (not installed, failed to import): the checks
    that need it are skipped with this message."""


class Adapter:
    """One framework. Subclasses set the class variables and override what differs."""

    name: ClassVar[str] = ""
    module: ClassVar[str] = ""  # the import name
    distributions: ClassVar[tuple[str, ...]] = ()  # where its version is read (default: module)
    array_type: ClassVar[str] = ""  # what its arrays are called, for messages
    install: ClassVar[str] = ""  # how to install it, for the skip reason
    autodiff: ClassVar[bool] = False  # reverse mode: `backward: autograd`
    forward_mode: ClassVar[bool] = False  # forward mode: `jvp: autograd`

    def __init__(self) -> None:
        self._module: ModuleType | None = None
        self._lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------

    def load(self) -> ModuleType:
        """Import the framework once (Unavailable if it cannot be)."""
        with self._lock:
            if self._module is None:
                try:
                    module = importlib.import_module(self.module)
                except ImportError as exc:
                    raise Unavailable(f"{self.name} is not installed ({exc}); {self.install}") from None
                except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
                    raise Unavailable(f"{self.name} failed to import: {type(exc).__name__}: {exc}") from None
                self.configure(module)  # may find it unusable (cupy without a device): Unavailable
                self._module = module
            return self._module

    def configure(self, module: ModuleType) -> None:
        """Settings made once after import (precision, threads)."""

    def installed(self) -> str | None:
        """The installed version, read from package metadata (nothing imported); None
        where it is not installed."""
        for dist in self.distributions or (self.module,):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return None

    # -- arrays -------------------------------------------------------------------------

    def is_native(self, value: object) -> bool:
        raise NotImplementedError

    def from_engine(self, array: Any) -> Any:
        """An engine array as this framework's array, sharing its memory where possible."""
        raise NotImplementedError

    def to_engine(self, value: Any, xp: ModuleType) -> Any:
        """One of this framework's arrays as an engine array (DLPack; a host copy where the
        two live on different devices)."""
        try:
            return xp.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError):
            return xp.asarray(np.asarray(value))

    def dtype_name(self, value: Any) -> str:
        """The numpy name of an array's dtype ('float32'); the framework's own for others."""
        return str(value.dtype).removeprefix(f"{self.module}.")

    def dtype(self, name: str) -> Any:
        """The framework's dtype for a numpy dtype name."""
        raise NotImplementedError

    def call_layer(
        self,
        layer: Any,
        method: str,
        params: Mapping[Any, Any],
        args: Sequence[Any],
        attrs: Mapping[str, Any],
    ) -> Any:
        """layer.method(*args, **attrs) with `params` (AccessPath -> array) in place of
        the layer's own parameters (set at their paths)."""
        for path, value in params.items():
            path.set(layer, value)
        return getattr(layer, method)(*args, **attrs)

    def parameter_names(self, layer: Any) -> list[str] | None:
        """The names `call_layer` can swap in (None: any path it can set)."""
        return None

    def compiled(self, fn: Callable[..., Any], attrs: Mapping[str, Any]) -> Callable[..., Any]:
        """fn(*args, **attrs) as the framework runs it best (jax: jit-compiled)."""
        return lambda *args: fn(*args, **attrs)

    # -- autodiff -----------------------------------------------------------------------

    def vjp(
        self, fn: Callable[..., Any], args: Sequence[Any], diff: Sequence[int], attrs: Mapping[str, Any]
    ) -> tuple[Any, Pullback]:
        """fn(*args, **attrs) and its pullback for the arguments at positions `diff`."""
        raise NotImplementedError(f"{self.name} has no automatic differentiation")

    def jvp(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        tangents: Mapping[int, Any],
        attrs: Mapping[str, Any],
    ) -> tuple[Any, list[Any]]:
        """fn(*args, **attrs) and, by forward mode, the derivative of each output along
        `tangents` (by argument position; the others held still)."""
        raise NotImplementedError(f"{self.name} has no forward-mode differentiation")

    def lacks_forward_mode(self, exc: BaseException) -> bool:
        """Whether `exc`, raised by `jvp`, says the framework has no forward-mode rule for
        an operation the layer uses (not that the layer is wrong)."""
        return isinstance(exc, NotImplementedError)


class NumpyAdapter(Adapter):
    name = "numpy"
    module = "numpy"
    array_type = "numpy.ndarray"
    install = "pip install numpy"

    def is_native(self, value: object) -> bool:
        return isinstance(value, (np.ndarray, np.generic))

    def from_engine(self, array: Any) -> Any:
        return np.asarray(array) if isinstance(array, np.ndarray) else _host(array)

    def to_engine(self, value: Any, xp: ModuleType) -> Any:
        return value if xp is np else xp.asarray(value)

    def dtype(self, name: str) -> Any:
        return np.dtype(name)


class CupyAdapter(Adapter):
    """cupy arrays; an engine on the CPU hands them over as device copies."""

    name = "cupy"
    module = "cupy"
    distributions = ("cupy", "cupy-cuda12x", "cupy-cuda11x", "cupy-cuda13x")
    array_type = "cupy.ndarray"
    install = "pip install cupy-cuda12x (needs an NVIDIA GPU)"

    def configure(self, module: ModuleType) -> None:
        try:
            count = module.cuda.runtime.getDeviceCount()
        except Exception as exc:  # noqa: BLE001 - cupy raises its own CUDA error types
            raise Unavailable(f"cupy is installed but no CUDA device is usable: {exc}") from None
        if count < 1:
            raise Unavailable("cupy is installed but there is no CUDA device")

    def is_native(self, value: object) -> bool:
        return type(value).__module__.startswith("cupy") and hasattr(value, "__dlpack__")

    def from_engine(self, array: Any) -> Any:
        cupy = self.load()
        if isinstance(array, np.ndarray):
            return cupy.asarray(array)
        return cupy.from_dlpack(array)

    def to_engine(self, value: Any, xp: ModuleType) -> Any:
        if xp is np:
            return value.get()
        return xp.from_dlpack(value)

    def dtype(self, name: str) -> Any:
        return self.load().dtype(name)


class TorchAdapter(Adapter):
    name = "torch"
    module = "torch"
    array_type = "torch.Tensor"
    install = "pip install torch (the CPU build: --index-url https://download.pytorch.org/whl/cpu)"
    autodiff = True
    forward_mode = True

    def configure(self, module: ModuleType) -> None:
        from specgrad.process import single_threaded

        if single_threaded():  # as BLAS: figures must not depend on how sums are split
            module.set_num_threads(1)
        # a float32 check holds float32 arithmetic to float32 rounding: on a GPU, TF32
        # products (10-bit mantissas; cuDNN convolutions use them by default) would be
        # ~1000x coarser, and the CPU/GPU agreement would measure TF32, not the kernel
        module.backends.cuda.matmul.allow_tf32 = False
        module.backends.cudnn.allow_tf32 = False
        # cuDNN's autotuned convolutions may sum in another order from call to call: the
        # backward_deterministic contract (bitwise by default) would fail on the library
        module.backends.cudnn.deterministic = True
        module.backends.cudnn.benchmark = False

    def is_native(self, value: object) -> bool:
        torch = self.load()
        return isinstance(value, torch.Tensor)

    def from_engine(self, array: Any) -> Any:
        torch = self.load()
        on_gpu = getattr(array, "__dlpack_device__", lambda: (1, 0))()[0] in (2, 13)  # CUDA, managed
        if not on_gpu or torch.cuda.is_available():  # else a CPU build of torch: a host copy
            try:
                return torch.from_dlpack(array)
            except (BufferError, RuntimeError, TypeError, AssertionError):  # read-only, oddly strided
                pass
        return torch.from_dlpack(np.array(_host(array), copy=True, order="C"))  # 0-d stays 0-d

    def to_engine(self, value: Any, xp: ModuleType) -> Any:
        value = value.detach().resolve_conj().resolve_neg()
        try:
            return xp.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError):
            return xp.asarray(value.cpu().numpy())

    def dtype_name(self, value: Any) -> str:
        return str(value.dtype).removeprefix("torch.")

    def parameter_names(self, layer: Any) -> list[str] | None:
        torch = self.load()
        if not isinstance(layer, torch.nn.Module):
            return None
        return [*dict(layer.named_parameters()), *dict(layer.named_buffers())]

    def lacks_forward_mode(self, exc: BaseException) -> bool:
        # "Trying to use forward AD with X that does not support it"; "x_jvp not implemented for 'Half'"
        return isinstance(exc, NotImplementedError) or (
            isinstance(exc, RuntimeError) and "not implemented for" in str(exc)
        )

    def call_layer(
        self,
        layer: Any,
        method: str,
        params: Mapping[Any, Any],
        args: Sequence[Any],
        attrs: Mapping[str, Any],
    ) -> Any:
        """An nn.Module's parameters cannot be assigned plain tensors: functional_call
        swaps them in for the call (its parameter and buffer names, dotted)."""
        torch = self.load()
        if not isinstance(layer, torch.nn.Module):
            return super().call_layer(layer, method, params, args, attrs)
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if device is not None and device.type != "cpu":
            layer.to(device)  # buffers and parameters the spec does not set, too
        names = {dotted(path): value for path, value in params.items()}
        if method == "forward":
            return torch.func.functional_call(layer, names, tuple(args), dict(attrs))
        with torch.nn.utils.stateless._reparametrize_module(layer, names):
            return getattr(layer, method)(*args, **attrs)

    def dtype(self, name: str) -> Any:
        return getattr(self.load(), name)

    def vjp(
        self, fn: Callable[..., Any], args: Sequence[Any], diff: Sequence[int], attrs: Mapping[str, Any]
    ) -> tuple[Any, Pullback]:
        torch = self.load()
        args = list(args)
        for i in diff:  # a new leaf over the same memory: the engine's array stays unchanged
            args[i] = args[i].detach().requires_grad_(True)
        with torch.enable_grad():
            out = fn(*args, **attrs)
        leaves = [args[i] for i in diff]

        def pullback(cotangents: Sequence[Any]) -> list[Any]:
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            pairs = [
                (o, c)
                for o, c in zip(outs, cotangents, strict=True)
                if c is not None and isinstance(o, torch.Tensor) and o.requires_grad
            ]
            grads: Sequence[Any] = [None] * len(leaves)
            if pairs:
                grads = torch.autograd.grad(
                    [o for o, _ in pairs],
                    leaves,
                    [c for _, c in pairs],
                    allow_unused=True,
                    retain_graph=True,  # backward_deterministic pulls back twice
                )
            return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)]

        return out, pullback

    def jvp(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        tangents: Mapping[int, Any],
        attrs: Mapping[str, Any],
    ) -> tuple[Any, list[Any]]:
        torch = self.load()
        import torch.autograd.forward_ad as fwad

        with fwad.dual_level():
            duals = [fwad.make_dual(a, tangents[i]) if i in tangents else a for i, a in enumerate(args)]
            out = fn(*duals, **attrs)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            primal: list[Any] = []
            tangent: list[Any] = []
            for o in outs:
                if not isinstance(o, torch.Tensor):
                    primal.append(o)
                    tangent.append(None)
                    continue
                p, t = fwad.unpack_dual(o)
                primal.append(p)
                if not p.is_floating_point():
                    t = None  # integer outputs have no derivative to compare
                elif t is None:
                    t = torch.zeros_like(p)
                tangent.append(t)
        return (tuple(primal) if isinstance(out, (tuple, list)) else primal[0]), tangent


class JaxAdapter(Adapter):
    """jax on its default device; float64 is enabled (jax_enable_x64), or the float64
    oracle would silently compute in float32."""

    name = "jax"
    module = "jax"
    array_type = "jax.Array"
    install = "pip install jax"
    autodiff = True
    forward_mode = True

    def load(self) -> ModuleType:
        from specgrad.process import single_threaded

        if "jax" not in sys.modules:
            # on a GPU jax takes 75% of its memory at start: -j N workers (and cupy beside
            # it) would run out; allocate as needed instead
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        if single_threaded() and "jax" not in sys.modules:
            # XLA reads its flags once, at import: one CPU thread, as for BLAS
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_cpu_multi_thread_eigen" not in flags:
                os.environ["XLA_FLAGS"] = (
                    f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()
                )
        return super().load()

    def configure(self, module: ModuleType) -> None:
        module.config.update("jax_enable_x64", True)
        # float32 products in float32 (on a GPU jax defaults to TF32 for them; see torch)
        module.config.update("jax_default_matmul_precision", "highest")
        self._compiled: dict[tuple[Any, int], tuple[Mapping[str, Any], Callable[..., Any]]] = {}

    def compiled(self, fn: Callable[..., Any], attrs: Mapping[str, Any]) -> Callable[..., Any]:
        """jax.jit of fn with its attrs fixed: eager jax compiles every operation for every
        new shape and dispatches them one by one (~8x slower per call here); a function
        that cannot be traced (Python control flow on values) or compiled runs eagerly."""
        jax = self.load()
        key = (fn, id(attrs))
        if key not in self._compiled:
            jitted = jax.jit(lambda *args: fn(*args, **attrs))
            eager = False

            def call(*args: Any) -> Any:
                nonlocal eager
                if not eager:
                    try:
                        return jitted(*args)
                    except Exception:  # noqa: BLE001 - not traceable or not compilable: eagerly,
                        eager = True  # where the user's own errors are raised as they are
                return fn(*args, **attrs)

            self._compiled[key] = (attrs, call)  # attrs kept alive: its id stays theirs
        return self._compiled[key][1]

    def is_native(self, value: object) -> bool:
        jax = self.load()
        return isinstance(value, jax.Array)

    def from_engine(self, array: Any) -> Any:
        jnp = importlib.import_module("jax.numpy")
        self.load()
        try:
            return jnp.from_dlpack(array)
        except (BufferError, RuntimeError, TypeError, ValueError):
            return jnp.asarray(_host(array))

    def to_engine(self, value: Any, xp: ModuleType) -> Any:
        value.block_until_ready()  # no computation may still read a buffer the engine reuses
        return super().to_engine(value, xp)

    def dtype(self, name: str) -> Any:
        return importlib.import_module("jax.numpy").dtype(name)

    def lacks_forward_mode(self, exc: BaseException) -> bool:
        # "can't apply forward-mode autodiff (jvp) to a custom_vjp function"
        return isinstance(exc, NotImplementedError) or (
            isinstance(exc, TypeError) and "custom_vjp" in str(exc)
        )

    def vjp(
        self, fn: Callable[..., Any], args: Sequence[Any], diff: Sequence[int], attrs: Mapping[str, Any]
    ) -> tuple[Any, Pullback]:
        jax = self.load()
        jnp = importlib.import_module("jax.numpy")

        moved = _substituted(self.compiled(fn, attrs), args, diff)
        out, pull = jax.vjp(moved, *[args[i] for i in diff])

        def pullback(cotangents: Sequence[Any]) -> list[Any]:
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            filled = [
                _jax_zero_cotangent(o, jax, jnp) if c is None else c
                for o, c in zip(outs, cotangents, strict=True)
            ]
            if isinstance(out, (tuple, list)):  # a namedtuple (slogdet) too: rebuilt as jax does
                tree = jax.tree_util.tree_structure(out)
                return list(pull(jax.tree_util.tree_unflatten(tree, filled)))
            return list(pull(filled[0]))

        return out, pullback

    def jvp(
        self,
        fn: Callable[..., Any],
        args: Sequence[Any],
        tangents: Mapping[int, Any],
        attrs: Mapping[str, Any],
    ) -> tuple[Any, list[Any]]:
        jax = self.load()
        moving = sorted(tangents)
        moved = _substituted(self.compiled(fn, attrs), args, moving)

        out, tangent = jax.jvp(moved, tuple(args[i] for i in moving), tuple(tangents[i] for i in moving))
        flat = list(tangent) if isinstance(out, (tuple, list)) else [tangent]
        # integer outputs have float0 tangents: no derivative to compare
        return out, [None if t.dtype == jax.dtypes.float0 else t for t in flat]


def _substituted(
    run: Callable[..., Any], args: Sequence[Any], positions: Sequence[int]
) -> Callable[..., Any]:
    """run(*args) as a function of the arguments at `positions` (jax differentiates in those)."""

    def moved(*values: Any) -> Any:
        full = list(args)
        for i, v in zip(positions, values, strict=True):
            full[i] = v
        return run(*full)

    return moved


def _jax_zero_cotangent(output: Any, jax: ModuleType, jnp: ModuleType) -> Any:
    """jax wants a cotangent for every output: zeros, or float0 for integer outputs."""
    if jnp.issubdtype(output.dtype, jnp.floating):
        return jnp.zeros_like(output)
    return np.zeros(output.shape, dtype=jax.dtypes.float0)


def dotted(path: Any) -> str:
    """An access path as a state-dict name: `blocks[0].weight` -> `blocks.0.weight`."""
    return ".".join(str(step.key) for step in path.steps)


def _host(array: Any) -> np.ndarray:
    get = getattr(array, "get", None)  # cupy
    return np.asarray(get() if callable(get) and not isinstance(array, np.ndarray) else array)


BUILTIN: dict[str, type[Adapter]] = {a.name: a for a in (NumpyAdapter, CupyAdapter, TorchAdapter, JaxAdapter)}


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Adapters third parties registered (read from installed metadata; nothing imported)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    return [*BUILTIN, *(n for n in sorted(_entry_points()) if n not in BUILTIN)]


def known(name: str) -> bool:
    return name in BUILTIN or name in _entry_points()


def unknown_message(name: str) -> str:
    choices = names()
    return (
        f"unknown framework '{name}'{did_you_mean(name, choices)} (known: {', '.join(choices)}; "
        f"others plug in through the '{ENTRY_POINT_GROUP}' entry point group)"
    )


_ADAPTERS: dict[str, Adapter] = {}
_ADAPTERS_LOCK = threading.Lock()


def adapter(name: str) -> Adapter:
    """The adapter of a framework (built in or registered); Unavailable if a registered
    one cannot be loaded. Its framework is not imported until it is used."""
    with _ADAPTERS_LOCK:
        if name not in _ADAPTERS:
            _ADAPTERS[name] = _make(name)
        return _ADAPTERS[name]


def _make(name: str) -> Adapter:
    if name in BUILTIN:
        return BUILTIN[name]()
    ep = _entry_points().get(name)
    if ep is None:
        raise Unavailable(unknown_message(name))
    try:
        made = ep.load()()
    except Exception as exc:  # noqa: BLE001 - third-party code
        raise Unavailable(
            f"the adapter '{name}' ({ep.value}) registered by an entry point failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(made, Adapter):
        raise Unavailable(f"the entry point '{name}' ({ep.value}) did not give a specgrad Adapter")
    return made


def versions(spec_frameworks: Sequence[str], verified: Mapping[str, str]) -> dict[str, dict[str, str | None]]:
    """{framework: {installed, verified_with}} for the frameworks a spec uses or names."""
    out: dict[str, dict[str, str | None]] = {}
    for name in dict.fromkeys([*spec_frameworks, *verified]):
        try:
            installed = adapter(name).installed()
        except Unavailable:  # not a framework specgrad knows: a package of that name?
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                installed = None
        out[name] = {"installed": installed, "verified_with": verified.get(name)}
    return out
