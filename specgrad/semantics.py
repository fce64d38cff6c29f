"""Stage 2, second half: the rules a JSON Schema cannot say, on data that passed it:
names that refer to each other, numbers that must be finite or whole, values exact in a
dtype, files that must exist, layer paths that must parse."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from specgrad.access import parse_path
from specgrad.errors import SpecIssue, did_you_mean
from specgrad.loader import JsonPath, RawSpec
from specgrad.model import SPECIAL_VALUES
from specgrad.numerics.tolerance import FLOAT_DTYPES

MAX_ELEMENTS = 10**8


def semantic_issues(raw: RawSpec) -> Iterator[SpecIssue]:
    data = raw.data
    numbers = list(_number_issues(raw, data, ()))
    if numbers:  # nothing below can trust these values
        yield from numbers
        return
    sections = {s: data.get(s) or {} for s in ("inputs", "parameters")}
    names = [*sections["inputs"], *sections["parameters"]]
    for name in sections["parameters"]:
        if name in sections["inputs"]:
            yield raw.issue(("parameters", name), f"'{name}' is already an input", key=True)
    dtypes = data.get("dtypes", ["float32", "float64"])
    for section, tensors in sections.items():
        for name, tensor in tensors.items():
            yield from _tensor_issues(raw, (section, name), tensor, dtypes)
    if not any(
        t.get("grad", t.get("dtype") in (None, *FLOAT_DTYPES)) for s in sections.values() for t in s.values()
    ):
        yield raw.issue(
            ("inputs",),
            "nothing to check: no tensor is differentiable "
            "(every tensor has grad: false or an integer dtype)",
        )
    yield from _case_issues(raw, names, dtypes)
    yield from _structure_issues(raw, {n: t for s in sections.values() for n, t in s.items()})
    for prefix in _binding_prefixes(data):
        yield from _binding_issues(raw, list(sections["parameters"]), prefix)
    yield from _implementation_issues(raw)
    if "second_order" in data:
        if data.get("convention", "functional") != "functional":
            yield raw.issue(
                ("second_order",),
                "second_order needs the functional convention (backward(grad_out, *tensors) is its forward)",
                key=True,
            )
        elif data.get("backward") == "autograd":
            yield raw.issue(
                ("second_order",),
                "second_order checks a hand-written backward as a layer of its own; with backward: autograd "
                "there is none (the framework's double backward is its own business)",
                key=True,
            )
        fixed = [
            n
            for s in sections.values()
            for n, t in s.items()
            if t.get("dtype") in FLOAT_DTYPES and t.get("grad", True)
        ]
        if fixed:
            yield raw.issue(
                ("second_order",),
                f"second_order needs differentiable tensors in the check's dtype; {', '.join(fixed)} "
                "has a fixed dtype (its gradient, an output of backward, would be held to both)",
                key=True,
            )
        if "grad_out" in names:
            yield raw.issue(
                ("second_order",),
                "second_order adds a tensor named grad_out: rename the tensor called grad_out",
                key=True,
            )
    for key in data.get("attrs") or {}:
        if not str(key).isidentifier():
            yield raw.issue(
                ("attrs", key), f"attribute name {key!r} is not a valid keyword argument name", key=True
            )
        elif key in names and data.get("convention", "functional") != "layer":
            yield raw.issue(
                ("attrs", key), f"'{key}' is also a tensor name: forward would receive it twice", key=True
            )


#: numeric fields that must hold whole numbers (JSON Schema's "integer" admits 2.0)
_INTEGER_FIELDS = {"shape", "seed", "max_elements", "directions", "axis", "output_axis", "radius"}


def _number_issues(raw: RawSpec, value: Any, path: JsonPath) -> Iterator[SpecIssue]:
    """Every number a spec gives (outside attrs and init, which belong to user code) is
    finite and representable as a float64; whole-number fields hold integers."""
    if path[:1] == ("attrs",) or path[:2] == ("layer", "init"):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _number_issues(raw, item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _number_issues(raw, item, (*path, i))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        whole = any(p in _INTEGER_FIELDS for p in path if isinstance(p, str)) or (
            path[-1:] in (("low",), ("high",)) and _is_integers_fill(raw.data, path[:-1])
        )
        if whole and isinstance(value, float):
            yield raw.issue(path, f"expected an integer, got number {value!r}")
        elif not _finite(value):
            yield raw.issue(path, f"expected a finite number, got {value!r}"[:200])


def _finite(value: float) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except OverflowError:
        return False


def _is_integers_fill(data: Any, path: JsonPath) -> bool:
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(node, dict) and node.get("kind") == "integers"


def _count(n: int) -> str:
    return f"{n:.3g}" if n < 10**300 else f"about 1e{len(str(n)) - 1}"


def _tensor_issues(
    raw: RawSpec, path: JsonPath, tensor: dict[str, Any], dtypes: list[str]
) -> Iterator[SpecIssue]:
    dtype = tensor.get("dtype")
    size = math.prod(tensor["shape"])  # exact: a product of huge dims must not overflow
    if size > MAX_ELEMENTS:
        yield raw.issue(
            (*path, "shape"),
            f"shape {tensor['shape']} has {_count(size)} elements; "
            f"the limit is {MAX_ELEMENTS:.0e} per tensor",
        )
    if tensor.get("grad") and dtype not in (None, *FLOAT_DTYPES):
        yield raw.issue(
            (*path, "grad"), f"a {dtype} tensor cannot be differentiated (set grad: false or a float dtype)"
        )
    if dtype not in (None, *FLOAT_DTYPES) and "fill" not in tensor:
        yield raw.issue(
            path,
            f"a {dtype} tensor needs a fill, e.g. {{kind: integers, low: 0, "
            "high: 10}} (the default normal fill makes non-integer values)",
            key=True,
        )
    if "fill" in tensor:
        yield from _fill_issues(
            raw, (*path, "fill"), tensor["fill"], [dtype] if dtype else dtypes, tensor["shape"]
        )


def _fill_issues(
    raw: RawSpec, path: JsonPath, fill: Any, dtypes: list[str], shape: list[int]
) -> Iterator[SpecIssue]:
    kind = fill if isinstance(fill, str) else fill["kind"]
    data = {} if isinstance(fill, str) else fill
    int_dtypes = [d for d in dtypes if d not in FLOAT_DTYPES]
    if int_dtypes and kind not in ("integers", "constant", "npy", "special"):
        yield raw.issue(
            path,
            f"a {kind} fill makes non-integer values; a {int_dtypes[0]} "
            "tensor needs {kind: integers, low: ..., high: ...}",
        )
    if kind in ("uniform", "integers"):
        low, high = data.get("low", 0 if kind == "integers" else -1.0), data.get("high", 1.0)
        if not low < high:
            yield raw.issue(path, f"empty range: low ({low}) must be below high ({high})")
        if "bool" in dtypes and (low < 0 or high > 2):
            yield raw.issue(path, f"a bool tensor takes integers in [0, 2), got [{low}, {high})")
    if kind == "special" or kind == "constant":
        values = data.get("values", SPECIAL_VALUES) if kind == "special" else [data["value"]]
        for dtype in dtypes:
            yield from _representable(raw, path, values, dtype)
    if kind == "npy":
        file = raw.path.parent / data["path"]
        root = project_root(raw.path)
        try:
            resolved = file.resolve()
            resolved.is_file()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte
            yield raw.issue((*path, "path"), f"not a usable file path: {exc}")
            return
        if not data.get("allow_outside_root") and not resolved.is_relative_to(root):
            yield raw.issue(
                (*path, "path"),
                f"{data['path']} resolves to {file.resolve()}, outside the spec's project {root} (the "
                f"nearest folder above the spec with one of {', '.join(PROJECT_MARKERS)}; else its "
                "folder); set allow_outside_root: true in this fill to read it anyway",
            )
            return
        yield from _npy_issues(raw, path, file, shape)


#: what marks a project's root folder, for the fixtures its specs may read
PROJECT_MARKERS = ("pyproject.toml", "setup.cfg", "setup.py", ".git")


def project_root(spec: Path) -> Path:
    """The nearest folder above the spec file (resolved) holding a PROJECT_MARKERS entry,
    else the spec's own folder."""
    folder = spec.resolve().parent
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in PROJECT_MARKERS):
            return candidate
    return folder


def _representable(raw: RawSpec, path: JsonPath, values: list[float], dtype: str) -> Iterator[SpecIssue]:
    for i, v in enumerate(values):
        stored = _stored(v, dtype)
        if stored is not None and (stored == v or (math.isnan(stored) and math.isnan(v))):
            continue  # Python compares ints and floats exactly
        where = (*path, "values", i) if raw.locations.get((*path, "values", i)) else path
        becomes = "it is out of the dtype's range" if stored is None else f"it would become {stored!r}"
        yield raw.issue(where, f"{v!r} is not exactly representable in {dtype} ({becomes})")


def _stored(value: float, dtype: str) -> float | int | None:
    """What a `dtype` array holds for `value` (None: out of its range)."""
    if dtype in FLOAT_DTYPES:
        try:
            as_float = float(value)
        except OverflowError:  # an int beyond float64's range
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            stored = float(np.asarray(as_float, dtype=np.float64).astype(dtype))
        return stored if math.isfinite(stored) or not math.isfinite(as_float) else None
    if isinstance(value, float) and not value.is_integer():
        return None if not math.isfinite(value) else float(int(value))
    if dtype == "bool":
        return value if value in (0, 1) else None
    info = np.iinfo(dtype)
    return int(value) if info.min <= value <= info.max else None


def _holds_objects(file: Path) -> bool:
    """Whether an .npy file's header says its dtype holds Python objects (read without
    loading the data; an unreadable header is np.load's to report)."""
    fmt = np.lib.format
    try:
        with open(file, "rb") as f:
            version = fmt.read_magic(f)
            header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            return bool(header(f)[2].hasobject)
    except (OSError, ValueError):
        return False


def _npy_issues(raw: RawSpec, path: JsonPath, file: Path, shape: list[int]) -> Iterator[SpecIssue]:
    if not file.is_file():
        yield raw.issue((*path, "path"), f"no such file: {file}")
        return
    if _holds_objects(file):
        yield raw.issue(
            (*path, "path"),
            f"{file} holds Python objects (a pickle): specgrad reads .npy files with allow_pickle=False, "
            "so save a numeric array",
        )
        return
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        yield raw.issue((*path, "path"), f"cannot read {file} as .npy: {exc}")
        return
    if array.dtype.kind not in "biuf":
        yield raw.issue(
            (*path, "path"),
            f"{file.name} holds {array.dtype} values; a fixture holds real numbers (float, int or bool)",
        )
        return
    if tuple(array.shape) != tuple(shape):
        yield raw.issue(
            (*path, "path"), f"{file.name} has shape {list(array.shape)}, the tensor declares {shape}"
        )


def _case_issues(raw: RawSpec, names: list[str], dtypes: list[str]) -> Iterator[SpecIssue]:
    seen: dict[str, int] = {}
    tensors = {**(raw.data.get("inputs") or {}), **(raw.data.get("parameters") or {})}
    for i, case in enumerate(raw.data.get("cases", [])):
        name = case if isinstance(case, str) else case["name"]
        if name in seen:
            yield raw.issue(("cases", i), f"duplicate case name '{name}' (also case {seen[name]})")
        seen[name] = i
        for tname, fill in ({} if isinstance(case, str) else case.get("fills") or {}).items():
            if tname not in names:
                yield raw.issue(
                    ("cases", i, "fills", tname),
                    f"no tensor named '{tname}'{did_you_mean(tname, names)}",
                    key=True,
                )
                continue
            t = tensors[tname]
            yield from _fill_issues(
                raw,
                ("cases", i, "fills", tname),
                fill,
                [t["dtype"]] if t.get("dtype") else dtypes,
                t["shape"],
            )


def _structure_issues(raw: RawSpec, tensors: dict[str, Any]) -> Iterator[SpecIssue]:
    """Declared links name tensors of the spec, axes they have, each axis once."""
    given = raw.data.get("structure")
    if not isinstance(given, dict):
        return
    for name, links in given.items():
        if name not in tensors:
            yield raw.issue(
                ("structure", name), f"no tensor named '{name}'{did_you_mean(name, list(tensors))}", key=True
            )
            continue
        if isinstance(links, str):
            continue
        rank = len(tensors[name]["shape"])
        axes: set[int] = set()
        outs: set[int] = set()
        for i, link in enumerate(links):
            axis, out = link["axis"], link.get("output_axis", link["axis"])
            if axis >= rank:
                yield raw.issue(
                    ("structure", name, i, "axis"),
                    f"{name} has {rank} axes (0 to {rank - 1}), not axis {axis}",
                )
            if axis in axes or out in outs:
                yield raw.issue(
                    ("structure", name, i),
                    f"axis {axis} -> output_axis {out}: each axis of {name} and of the outputs "
                    "is linked once",
                )
            axes.add(axis)
            outs.add(out)


def _layer_io_issues(raw: RawSpec, layer: dict[str, Any], at: JsonPath) -> Iterator[SpecIssue]:
    """`output` and `input_grads` paths parse, and input_grads covers every differentiable input."""
    if "output" in layer:
        yield from _path_issue(raw, (*at, "output"), layer["output"])
    if "input_grads" not in layer:
        return
    inputs = raw.data.get("inputs") or {}
    for name, path in layer["input_grads"].items():
        if name not in inputs:
            yield raw.issue(
                (*at, "input_grads", name),
                f"no input named '{name}'{did_you_mean(name, list(inputs))}",
                key=True,
            )
        yield from _path_issue(raw, (*at, "input_grads", name), path)
    for name, tensor in inputs.items():
        if (
            tensor.get("grad", tensor.get("dtype") in (None, *FLOAT_DTYPES))
            and name not in layer["input_grads"]
        ):
            yield raw.issue(
                (*at, "input_grads"),
                f"missing layer.input_grads.{name}: where the "
                f"gradient of differentiable input '{name}' is read after backward",
            )


def _node(data: Any, path: JsonPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _path_issue(raw: RawSpec, where: JsonPath, text: str) -> Iterator[SpecIssue]:
    try:
        parse_path(text)
    except ValueError as exc:
        yield raw.issue(where, str(exc))


def _binding_prefixes(data: dict[str, Any]) -> list[JsonPath]:
    """Where bindings are written: each implementation, else the top level."""
    if "implementations" in data:
        return [("implementations", name) for name in data["implementations"]]
    return [()]


#: the fields a binding is made of; with `implementations:` they go inside each one
BINDING_FIELDS = ("framework", "convention", "forward", "backward", "layer", "jvp")


def _implementation_issues(raw: RawSpec) -> Iterator[SpecIssue]:
    data = raw.data
    impls = data.get("implementations")
    if impls is None:
        if "reference" in data:
            yield raw.issue(
                ("reference",), "reference names one of implementations:, which this spec has not", key=True
            )
        return
    for key in BINDING_FIELDS:
        if key not in data:
            continue
        if raw.locate((key,), key=True).file != raw.path:  # from an `extends:` base
            yield raw.issue(
                ("implementations",),
                f"'{key}' is inherited from {raw.locate((key,), key=True).file}; with implementations: each "
                f"implementation has its own: drop the base's with '{key}: null' in this spec",
                key=True,
            )
            continue
        yield raw.issue(
            (key,),
            f"with implementations:, '{key}' goes inside each implementation (the top level states the "
            "contract: tensors, dtypes, cases, tolerances)",
            key=True,
        )
    if "second_order" in data:
        yield raw.issue(
            ("second_order",),
            "second_order is checked in the short form only (one forward/backward)",
            key=True,
        )
    reference = data.get("reference")
    if reference is not None and reference not in impls:
        yield raw.issue(
            ("reference",),
            f"no implementation named '{reference}'{did_you_mean(reference, list(impls))} "
            f"(implementations: {', '.join(impls)})",
        )


def _framework_issues(raw: RawSpec, block: dict[str, Any], at: JsonPath) -> Iterator[SpecIssue]:
    """The framework is known, and has the autodiff `backward: autograd` / `jvp` ask of it
    (built-in adapters only: a registered one is not imported to find out)."""
    from specgrad import frameworks

    name = block.get("framework", "numpy")
    if not frameworks.known(name):
        yield raw.issue((*at, "framework"), frameworks.unknown_message(name))
        return
    adapter = frameworks.BUILTIN.get(name)
    layer = block.get("layer") if block.get("convention") == "layer" else None
    if isinstance(layer, dict) and layer.get("backward") == "autograd":
        yield from _layer_autograd_issues(raw, layer, (*at, "layer"), name, adapter)
    autograd = block.get("backward") == "autograd"
    if autograd and block.get("convention", "functional") != "functional":
        yield raw.issue(
            (*at, "backward"),
            f"backward: autograd derives the VJP of a forward that returns its outputs: it needs the "
            f"functional convention, not {block.get('convention')}",
        )
    elif autograd and adapter is not None and not adapter.autodiff:
        with_autodiff = [n for n, a in frameworks.BUILTIN.items() if a.autodiff]
        yield raw.issue(
            (*at, "backward"),
            f"backward: autograd needs a framework with automatic differentiation "
            f"({', '.join(with_autodiff)}); this binding's framework is {name}",
        )
    if "jvp" in block:
        if block.get("convention", "functional") != "functional":
            yield raw.issue((*at, "jvp"), "jvp: autograd needs the functional convention")
        elif adapter is not None and not adapter.forward_mode:
            yield raw.issue(
                (*at, "jvp"), f"jvp: autograd needs a framework with forward mode; {name} has none"
            )
        elif not autograd:
            yield raw.issue(
                (*at, "jvp"),
                "jvp: autograd checks the forward mode the framework derives alongside backward: autograd; "
                "this binding's backward is hand-written",
            )


def _layer_autograd_issues(
    raw: RawSpec, layer: dict[str, Any], at: JsonPath, name: str, adapter: Any
) -> Iterator[SpecIssue]:
    """`layer.backward: autograd`: the framework differentiates the layer's forward; the
    layer stores no gradients or outputs for specgrad to read."""
    if adapter is not None and not adapter.autodiff:
        yield raw.issue(
            (*at, "backward"),
            f"backward: autograd needs a framework with automatic differentiation; this layer's is {name}",
        )
    for key in ("output", "input_grads"):
        if key in layer:
            yield raw.issue(
                (*at, key),
                f"layer.{key} reads what a hand-written backward stored; with backward: autograd the "
                "framework's autodiff gives the gradients",
                key=True,
            )
    for pname, where in (layer.get("params") or {}).items():
        if "grad" in where:
            yield raw.issue(
                (*at, "params", pname, "grad"),
                "with backward: autograd the gradient comes from autodiff, not from a path",
                key=True,
            )


def _binding_issues(raw: RawSpec, params: list[str], at: JsonPath) -> Iterator[SpecIssue]:
    data = _node(raw.data, at)
    yield from _framework_issues(raw, data, at)
    if data.get("convention") == "layer" and "layer" not in data:
        return  # an abstract base may leave its binding to the specs extending it
    if data.get("convention", "functional") != "layer":
        if "layer" in data:
            yield raw.issue((*at, "layer"), "a layer: block needs convention: layer", key=True)
        return
    for key in ("forward", "backward"):
        if key in data:
            yield raw.issue(
                (*at, key),
                f"convention: layer takes method names in layer.{key}, not a top-level {key} import string",
                key=True,
            )
    located = data["layer"].get("params") or {}
    for name in params:
        if name not in located:
            yield raw.issue(
                (*at, "layer"),
                f"missing layer.params.{name}: where parameter "
                f"'{name}' lives on the object (value: path, grad: path)",
            )
    yield from _layer_io_issues(raw, data["layer"], (*at, "layer"))
    for name, where in located.items():
        if name not in params:
            yield raw.issue(
                (*at, "layer", "params", name),
                f"no parameter named '{name}'{did_you_mean(name, params)}",
                key=True,
            )
        for part in ("value", "grad"):
            if part in where:
                yield from _path_issue(raw, (*at, "layer", "params", name, part), where[part])
        tensor = (raw.data.get("parameters") or {}).get(name, {})
        derived = data["layer"].get("backward") == "autograd"
        if (
            not derived
            and "grad" not in where
            and tensor.get("grad", tensor.get("dtype") in (None, *FLOAT_DTYPES))
        ):
            yield raw.issue(
                (*at, "layer", "params", name),
                f"missing grad: where the gradient of "
                f"differentiable parameter '{name}' is read after backward",
            )
