"""A simulated accelerator (`--device sim`): numpy does the arithmetic, cupy's rules apply.

A device array library refuses what numpy allows on the host: implicit conversion to a
numpy array (`numpy.asarray(d)` raises), arithmetic that mixes host and device arrays,
numpy functions it does not have (`errstate`, `insert`, ...); its reductions return 0-d
device arrays, not Python scalars; every value read back (`float()`, `.item()`, `.get()`,
`if` on an array) is a device-to-host transfer. `SimArray` follows those rules, so the
engine and an array-namespace-generic layer can be checked for GPU readiness on a CPU:
what runs under `sim` runs on cupy, what breaks on cupy for these reasons breaks here too,
with the same TypeError. `TRANSFERS` counts the transfers each way (what makes a device
check latency-bound).

Not simulated: kernel-level behaviour (other summation orders, fused multiply-adds,
cupy's own transcendental functions), so `sim` results equal numpy's bit for bit.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

#: numpy functions cupy 14 does not have (numpy 2.x names absent from `dir(cupy)`)
NUMPY_ONLY = frozenset(
    """False_ ScalarType True_ asmatrix block bmat busday_count busday_offset busdaycalendar
    bytes_ char character clongdouble complex256 core ctypeslib datetime64 datetime_as_string
    datetime_data dtypes einsum_path emath errstate f2py flexible float128 frompyfunc fromregex
    geomspace get_include getbufsize geterr geterrcall histogram_bin_edges info insert is_busday
    isnat little_endian longdouble ma matrix matvec memmap nanpercentile nanquantile ndenumerate
    nditer nested_iters object_ polyder polydiv polyint rec recarray record sctypeDict setbufsize
    seterr seterrcall show_runtime spacing str_ strings test timedelta64 typecodes unstack vecdot
    vecmat void""".split()
)

#: numpy.ndarray members cupy.ndarray does not have
NDARRAY_ONLY = frozenset({"ctypes", "getfield", "resize", "setfield", "setflags", "to_device"})

#: functions that take host data on purpose (an explicit transfer to the device)
_TRANSFER_IN = frozenset({"asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray"})

#: cupy functions stricter than numpy's about their arguments: name -> (accepts, what fails)
_STRICT: dict[str, tuple[Callable[..., bool], str]] = {
    "unravel_index": (
        lambda indices, *a, **k: isinstance(indices, SimArray),
        "cupy.unravel_index takes a device array of indices: a Python int fails there "
        "('bool' object has no attribute 'any'); use numpy.unravel_index on the host",
    ),
}

#: cupy functions that read back from the device before they return (their docstrings'
#: "# synchronize!"): how many times; a boolean mask index reads back the count too
_SYNCING = {"bincount": 2, "nonzero": 1, "flatnonzero": 1, "argwhere": 1, "unique": 1}

#: device-to-host ("to_host") and host-to-device ("to_device") transfers so far
TRANSFERS: Counter[str] = Counter()


def _refuse_host(what: str) -> TypeError:
    return TypeError(
        f"{what}: a host numpy array cannot be mixed with device arrays (simulated device, as on "
        "cupy); move it first with xp.asarray"
    )


def _unwrap(value: Any, where: str) -> Any:
    """The numpy value under `value` (recursively in lists and tuples); a host array refused."""
    if isinstance(value, SimArray):
        return value._a
    if isinstance(value, np.ndarray):
        raise _refuse_host(where)
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, where) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, where) for k, v in value.items()}
    return value


def _wrap(value: Any) -> Any:
    """Device arrays for numpy results; a numpy scalar becomes a 0-d device array (cupy's
    reductions return arrays); tuples and lists of results element by element."""
    if isinstance(value, np.ndarray):
        return SimArray(value)
    if isinstance(value, np.generic):
        return SimArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
        return [_wrap(v) for v in value]
    if isinstance(value, (np.random.Generator, np.random.RandomState)):
        return _OnDevice(value)  # cupy's generators draw on the device
    return value


def _index(key: Any) -> Any:
    """An index: device arrays unwrapped (a boolean mask reads its count back, as on cupy);
    host index arrays are copied over (cupy does too)."""
    if isinstance(key, SimArray):
        if key.dtype == np.bool_:
            TRANSFERS["to_host"] += 1
        return key._a
    if isinstance(key, np.ndarray):
        TRANSFERS["to_device"] += 1
        return key
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key


class SimArray:
    """A device array of the simulated accelerator (see the module docstring)."""

    __slots__ = ("_a",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, array: np.ndarray) -> None:
        self._a = array

    # -- what cupy refuses or counts -------------------------------------------------

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed (simulated device array, as on cupy): "
            "use .get() or the backend's to_host"
        )

    def get(self) -> np.ndarray:
        TRANSFERS["to_host"] += 1
        return self._a.copy()

    def item(self, *args: Any) -> Any:
        TRANSFERS["to_host"] += 1
        return self._a.item(*args)

    def tolist(self) -> Any:
        TRANSFERS["to_host"] += 1
        return self._a.tolist()

    def __float__(self) -> float:
        TRANSFERS["to_host"] += 1
        return float(self._a)

    def __int__(self) -> int:
        TRANSFERS["to_host"] += 1
        return int(self._a)

    def __complex__(self) -> complex:
        TRANSFERS["to_host"] += 1
        return complex(self._a)

    def __bool__(self) -> bool:
        TRANSFERS["to_host"] += 1
        return bool(self._a)

    def __format__(self, spec: str) -> str:
        TRANSFERS["to_host"] += 1
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self) -> str:
        return f"SimArray({self._a!r})"

    def __array_namespace__(self, api_version: str | None = None) -> ModuleType:
        return xp

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return self._a.__dlpack_device__()

    # -- numpy's protocols: functions cupy has run, mixed with host arrays they raise --

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if not hasattr(xp, ufunc.__name__):  # numpy-only (spacing) or foreign (scipy.special.erf)
            raise TypeError(
                f"ufunc {ufunc.__name__!r} is not available for device arrays (simulated, as on cupy)"
            )
        args = _unwrap(inputs, f"numpy.{ufunc.__name__}")
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"], f"numpy.{ufunc.__name__}(out=)")
        return _wrap(getattr(ufunc, method)(*args, **kwargs))

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        space: Any = xp
        for part in func.__module__.removeprefix("numpy").split("."):
            if part and not part.startswith("_"):
                space = getattr(space, part, None)
        found = getattr(space, func.__name__, None)
        if found is None:
            raise TypeError(
                f"numpy.{func.__name__} is not available for device arrays (simulated, as on cupy)"
            )
        return found(*args, **kwargs)

    # -- the array -------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._a.dtype

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def size(self) -> int:
        return self._a.size

    @property
    def itemsize(self) -> int:
        return self._a.itemsize

    @property
    def nbytes(self) -> int:
        return self._a.nbytes

    @property
    def strides(self) -> tuple[int, ...]:
        return self._a.strides

    @property
    def flags(self) -> Any:
        return self._a.flags

    @property
    def T(self) -> SimArray:
        return SimArray(self._a.T)

    @property
    def real(self) -> SimArray:
        return SimArray(self._a.real)

    @property
    def imag(self) -> SimArray:
        return SimArray(self._a.imag)

    @property
    def base(self) -> SimArray | None:
        return None if self._a.base is None else SimArray(self._a.base)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        return (_wrap(row) for row in self._a)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_index(key)] = _unwrap(value, "assigning to a device array")

    def __copy__(self) -> SimArray:
        return SimArray(self._a.copy())

    def __deepcopy__(self, memo: Any) -> SimArray:
        return SimArray(self._a.copy())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in NDARRAY_ONLY:
            raise AttributeError(f"device arrays have no attribute {name!r} (simulated, as on cupy)")
        member = getattr(self._a, name)
        if not callable(member):
            return _wrap(member)

        def method(*args: Any, **kwargs: Any) -> Any:
            where = f"ndarray.{name}"
            return _wrap(member(*_unwrap(args, where), **_unwrap(kwargs, where)))

        return method


def _binary(op: Callable[[Any, Any], Any], name: str) -> Callable[[SimArray, Any], Any]:
    def forward(self: SimArray, other: Any) -> Any:
        return _wrap(op(self._a, _unwrap(other, f"operator {name}")))

    return forward


def _reflected(op: Callable[[Any, Any], Any], name: str) -> Callable[[SimArray, Any], Any]:
    def reflected(self: SimArray, other: Any) -> Any:
        return _wrap(op(_unwrap(other, f"operator {name}"), self._a))

    return reflected


def _inplace(op: Callable[[Any, Any], Any], name: str) -> Callable[[SimArray, Any], Any]:
    def inplace(self: SimArray, other: Any) -> SimArray:
        self._a = op(self._a, _unwrap(other, f"operator {name}="))
        return self

    return inplace


for _name, _op in {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "matmul": operator.matmul,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
}.items():
    setattr(SimArray, f"__{_name}__", _binary(_op, _name))
    setattr(SimArray, f"__r{_name}__", _reflected(_op, _name))
    setattr(SimArray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}"), _name))
for _name, _op in {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}.items():
    setattr(SimArray, f"__{_name}__", _binary(_op, _name))
for _name, _unary in {
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": operator.abs,
    "invert": operator.invert,
}.items():
    setattr(SimArray, f"__{_name}__", lambda self, _f=_unary: _wrap(_f(self._a)))


class _OnDevice:
    """A numpy object whose methods make device arrays (a random generator: cupy's draw
    on the device)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        member = getattr(self._inner, name)
        if not callable(member):
            return _wrap(member)
        where = f"{type(self._inner).__name__}.{name}"
        return lambda *args, **kwargs: _wrap(member(*_unwrap(args, where), **_unwrap(kwargs, where)))


class _Ufunc:
    """A numpy ufunc on device arrays, with the methods cupy's ufuncs have."""

    def __init__(self, ufunc: np.ufunc) -> None:
        self._u = ufunc
        self.__name__ = ufunc.__name__

    def _run(self, method: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        where = f"{self.__name__}"
        return _wrap(method(*_unwrap(args, where), **_unwrap(kwargs, where)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self._u, args, kwargs)

    def at(self, a: SimArray, indices: Any, b: Any = None) -> None:
        target = _unwrap(a, f"{self.__name__}.at")
        if b is None:
            self._u.at(target, _index(indices))
        else:
            self._u.at(target, _index(indices), _unwrap(b, f"{self.__name__}.at"))

    def __getattr__(self, name: str) -> Any:
        member = getattr(self._u, name)
        if not callable(member):
            return member
        return lambda *args, **kwargs: self._run(member, args, kwargs)


class _Namespace(ModuleType):
    """numpy's namespace with cupy's rules: host arrays only through asarray & co."""

    def __init__(self, name: str, source: ModuleType, refused: frozenset[str]) -> None:
        super().__init__(name)
        self._source, self._refused = source, refused
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._refused:
            raise AttributeError(
                f"module {self.__name__!r} has no attribute {name!r} (numpy has it, cupy does not)"
            )
        if name not in self._cache:
            self._cache[name] = self._adapt(name, getattr(self._source, name))
        return self._cache[name]

    def _adapt(self, name: str, member: Any) -> Any:
        if isinstance(member, ModuleType):
            return _Namespace(f"{self.__name__}.{name}", member, frozenset())
        if isinstance(member, np.ufunc):
            return _Ufunc(member)
        if (isinstance(member, type) and not self.__name__.endswith(".random")) or not callable(member):
            return member  # dtypes, finfo, constants: numpy's own, as in cupy
        if name in _TRANSFER_IN:
            return _transfer_in(member)

        strict = _STRICT.get(name) if self._source is np else None
        syncs = _SYNCING.get(name, 0) if self._source is np else 0

        def function(*args: Any, **kwargs: Any) -> Any:
            where = f"{self.__name__}.{name}"
            if strict is not None and not strict[0](*args, **kwargs):
                raise TypeError(f"{where}: {strict[1]} (simulated device, as on cupy)")
            TRANSFERS["to_host"] += syncs
            return _wrap(member(*_unwrap(args, where), **_unwrap(kwargs, where)))

        function.__name__ = name
        return function


def _holds_device(value: Any) -> bool:
    return isinstance(value, SimArray) or (
        isinstance(value, (list, tuple)) and any(_holds_device(v) for v in value)
    )


def _transfer_in(make: Callable[..., np.ndarray]) -> Callable[..., Any]:
    def transfer(value: Any, *args: Any, **kwargs: Any) -> SimArray:
        if _holds_device(value):  # device arrays (cupy stacks a nested sequence of them there)
            return SimArray(make(_unwrap(value, "xp.asarray"), *args, **kwargs))
        TRANSFERS["to_device"] += 1
        made = make(value, *args, **kwargs)
        # a fresh device buffer: never a view of host memory
        return SimArray(made.copy() if np.shares_memory(made, value) else made)

    return transfer


def asnumpy(array: Any) -> np.ndarray:
    """cupy.asnumpy: a host copy (a host array is returned as it is)."""
    return array.get() if isinstance(array, SimArray) else np.asarray(array)


def from_dlpack(value: Any) -> SimArray:
    return SimArray(np.from_dlpack(value).copy())


def _namespace() -> _Namespace:
    space = _Namespace("specgrad.simulated.xp", np, NUMPY_ONLY)
    space._cache.update(
        asnumpy=asnumpy, from_dlpack=from_dlpack, ndarray=SimArray, get_array_module=lambda *a: space
    )
    return space


#: the namespace of the simulated accelerator (what `xp` is under --device sim)
xp = _namespace()
