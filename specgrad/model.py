"""The typed spec model. `spec_from_validated` is the only door from plain data to it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from specgrad.access import AccessPath, parse_path
from specgrad.errors import Location
from specgrad.loader import RawSpec
from specgrad.numerics.tolerance import DEFAULT_TOLERANCES, FLOAT_DTYPES, Tolerance

#: the seed's FP-representable special values (exact in float16, float32 and float64)
SPECIAL_VALUES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, -1.0, -0.5)

#: the built-in cases, in the order a spec without `cases:` runs them
DEFAULT_CASES = ("random", "wide", "special")

#: the `wide` case draws normal fills with this many times their std (a branch for |x| > 3
#: is reached by most elements) and uniform fills from their domain's outer tails
WIDE_FACTOR = 4.0
TAIL_SHARE = 0.05

FillKind = Literal["normal", "uniform", "special", "constant", "npy", "integers"]
Convention = Literal["functional", "cached", "layer"]


@dataclass(frozen=True, slots=True)
class Fill:
    """How a tensor's values are made; only the fields of its kind are meaningful."""

    kind: FillKind
    mean: float = 0.0
    std: float = 1.0
    low: float = -1.0
    high: float = 1.0
    values: tuple[float, ...] = SPECIAL_VALUES
    path: Path | None = None
    shuffle: bool = False  # special: the cycled values in a seeded random order
    tails: bool = False  # uniform: only the outer TAIL_SHARE of [low, high) at each end

    @property
    def is_random(self) -> bool:
        return self.kind in ("normal", "uniform", "integers")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    role: Literal["input", "parameter"]
    shape: tuple[int, ...]
    dtype: str | None  # None: the check's dtype
    grad: bool
    fill: Fill
    location: Location

    def dtype_in(self, check_dtype: str) -> str:
        return self.dtype or check_dtype


@dataclass(frozen=True, slots=True)
class Case:
    """A named input case; `fills` replaces the tensors' own fills for the tensors it names."""

    name: str
    fills: Mapping[str, Fill]
    location: Location


@dataclass(frozen=True, slots=True)
class ImportRef:
    target: str  # "package.module:qualname"
    location: Location
    field: str


@dataclass(frozen=True, slots=True)
class FunctionBinding:
    convention: Literal["functional", "cached"]
    forward: ImportRef
    backward: ImportRef


@dataclass(frozen=True, slots=True)
class ParamLocation:
    value: AccessPath
    grad: AccessPath | None  # None: a frozen (grad: false) parameter


@dataclass(frozen=True, slots=True)
class LayerBinding:
    factory: ImportRef
    init: Mapping[str, Any]
    forward: str
    backward: str
    params: Mapping[str, ParamLocation]
    output: AccessPath | None = None  # read the output here instead of forward's return value
    input_grads: Mapping[str, AccessPath] | None = None  # instead of backward's return value
    #: where each field was written ("layer.init", "layer.params.W.value", ...), for errors
    locations: Mapping[str, Location] = field(default_factory=lambda: MappingProxyType({}))
    convention: Literal["layer"] = "layer"


@dataclass(frozen=True, slots=True)
class SecondOrderBinding:
    """A layer's backward seen as a forward (inputs: the tensors, then grad_out), and its
    double backward as that forward's backward."""

    first: FunctionBinding
    double_backward: ImportRef
    first_tensors: tuple[str, ...]  # the original tensors, in order (grad_out comes last)
    first_grads: tuple[str, ...]  # the original differentiable tensors: the outputs
    convention: Literal["second_order"] = "second_order"


@dataclass(frozen=True, slots=True)
class AutogradBinding:
    """`backward: autograd`: the framework's automatic differentiation derives the VJP of
    forward (and the JVP, with `jvp: autograd`), so its rules are what gets checked."""

    forward: ImportRef
    convention: Literal["autograd"] = "autograd"


Binding = FunctionBinding | LayerBinding | SecondOrderBinding | AutogradBinding


@dataclass(frozen=True, slots=True)
class AgreementTolerance:
    """The differential check's bound for one dtype: None fields keep the measured budget
    (see `agreement`); a spec's rtol/atol replace it."""

    rtol: float | None = None
    atol: float | None = None
    reason: str | None = None

    @property
    def hand_set(self) -> bool:
        return self.rtol is not None or self.atol is not None


@dataclass(frozen=True, slots=True)
class Method:
    """How gradients are checked: every element (`elementwise`, optionally a stratified
    sample of at most `max_elements` per tensor) or `directional`: `directions` seeded
    projections <grad, d>, each two forward calls whatever the tensor's size."""

    mode: Literal["elementwise", "directional"] = "elementwise"
    max_elements: int | None = None
    directions: int = 8
    structured: bool = True  # elementwise: perturb groups the Jacobian's structure allows
    #: bytes one check may take (--max-memory; None: half the memory available, see budget)
    max_memory: int | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """Input axis `axis` moves output axis `out_axis` only within the window [lo, hi]
    around the element's mapped position (structure.center); lo = hi = 0: independent."""

    axis: int
    out_axis: int
    lo: int = 0
    hi: int = 0


#: a tensor's declared Jacobian structure: detected (auto), none (dense), every element
#: moves only its own outputs (elementwise), or explicit links
Structure = Literal["auto", "dense", "elementwise"] | tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Spec:
    """A layer's contract. With several implementations, `binding` is None and each one
    is a Spec of its own in `implementations` (name NAME@IMPL), sharing everything else."""

    name: str
    description: str
    path: Path
    binding: Binding | None
    tensors: tuple[TensorSpec, ...]
    attrs: Mapping[str, Any]
    dtypes: tuple[str, ...]
    cases: tuple[Case, ...]
    seed: int
    tolerances: Mapping[str, Tolerance]
    name_location: Location
    kinks: Literal["subgradient", "skip", "fail"] = "subgradient"
    method: Method = field(default_factory=Method)
    contracts_off: frozenset[str] = frozenset()  # contract kinds the spec switched off
    nondet_tol: float = 0.0  # backward twice may differ by this much, relative
    second_order: Spec | None = None  # NAME.second_order: backward checked as a layer
    structure: Mapping[str, Structure] = field(default_factory=lambda: MappingProxyType({}))
    framework: str = "numpy"  # what the binding's callables take and return
    jvp: bool = False  # check the framework's forward mode too (contract.jvp)
    implementation: str = ""  # this implementation's name (NAME@IMPL); "" in the short form
    implementations: tuple[Spec, ...] = ()
    reference: str = ""  # the implementation the others are compared with
    agreement: Mapping[str, AgreementTolerance] = field(default_factory=lambda: MappingProxyType({}))
    verified_with: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    abstract: bool = False  # a base for other specs (extends:), not checked itself
    devices: tuple[str, ...] | None = None  # where the binding runs (device:); None: anywhere
    timeout: float | None = None  # seconds per check (timeout:), over --timeout

    def runs_on(self, device: str) -> bool:
        """Whether the binding supports the device (`sim` stands in for the GPU)."""
        return self.devices is None or device in self.devices or (device == "sim" and "gpu" in self.devices)

    @property
    def contract(self) -> str:
        """The name of the spec the contract is stated in (NAME of NAME@IMPL)."""
        return self.name.partition("@")[0]

    def structure_of(self, name: str) -> Structure:
        return self.structure.get(name, "auto")

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.role == "input")

    @property
    def parameters(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.role == "parameter")

    def tensor(self, name: str) -> TensorSpec:
        return next(t for t in self.tensors if t.name == name)


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def fill_from_data(data: str | Mapping[str, Any] | None, folder: Path) -> Fill:
    if data is None:
        return Fill("normal")
    if isinstance(data, str):
        return Fill(data)  # type: ignore[arg-type]
    kind = data["kind"]
    if kind == "special":
        return Fill("special", values=tuple(float(v) for v in data.get("values", SPECIAL_VALUES)))
    if kind == "constant":
        return Fill("constant", values=(float(data["value"]),))
    if kind == "npy":
        return Fill("npy", path=folder / data["path"])
    if kind == "integers":
        return Fill("integers", low=int(data.get("low", 0)), high=int(data["high"]))
    default = Fill(kind)
    return Fill(
        kind,
        mean=float(data.get("mean", default.mean)),
        std=float(data.get("std", default.std)),
        low=float(data.get("low", default.low)),
        high=float(data.get("high", default.high)),
    )


def default_grad(dtype: str | None) -> bool:
    return dtype is None or dtype in FLOAT_DTYPES


def _tensors(raw: RawSpec) -> tuple[TensorSpec, ...]:
    out = []
    folder = raw.path.parent
    for section, role in (("inputs", "input"), ("parameters", "parameter")):
        for name, t in (raw.data.get(section) or {}).items():
            dtype = t.get("dtype")
            out.append(
                TensorSpec(
                    name=name,
                    role=role,  # type: ignore[arg-type]
                    shape=tuple(t["shape"]),
                    dtype=dtype,
                    grad=t.get("grad", default_grad(dtype)),
                    fill=fill_from_data(t.get("fill"), folder),
                    location=raw.locate((section, name), key=True),
                )
            )
    return tuple(out)


def _cases(raw: RawSpec, tensors: tuple[TensorSpec, ...]) -> tuple[Case, ...]:
    out = []
    folder = raw.path.parent
    for i, case in enumerate(raw.data.get("cases", DEFAULT_CASES)):
        loc = raw.locate(("cases", i))
        if case == "random":
            out.append(Case("random", _frozen({}), loc))
        elif case == "wide":
            out.append(Case("wide", _frozen(_wide_fills(tensors)), loc))
        elif case == "special":
            # only default-style random fills: bounded uniform fills encode a domain, and
            # npy / constant / integers fills are data the author chose on purpose. Every
            # value appears equally often, in a seeded random order per tensor: windows see
            # ties (max pooling), elementwise layers see the kink at 0, and two tensors of
            # one shape (a loss's prediction and target) never hold identical values.
            fills = {
                t.name: Fill("special", values=_rotated(SPECIAL_VALUES, k), shuffle=True)
                for k, t in enumerate(tensors)
                if t.grad and t.dtype is None and t.fill.kind == "normal"
            }
            out.append(Case("special", _frozen(fills), loc))
        else:
            fills = {k: fill_from_data(v, folder) for k, v in (case.get("fills") or {}).items()}
            out.append(Case(case["name"], _frozen(fills), loc))
    return tuple(out)


def _rotated(values: tuple[float, ...], k: int) -> tuple[float, ...]:
    k %= len(values)
    return values[k:] + values[:k]


def _wide_fills(tensors: tuple[TensorSpec, ...]) -> dict[str, Fill]:
    """The tails of each random fill's range: branches for large |x| (saturation
    shortcuts) and the edges of a declared domain are where bugs hide from unit inputs."""
    out = {}
    for t in tensors:
        f = t.fill
        if f.kind == "normal":
            out[t.name] = Fill("normal", mean=f.mean, std=f.std * WIDE_FACTOR)
        elif f.kind == "uniform":
            out[t.name] = Fill("uniform", low=f.low, high=f.high, tails=True)
    return out


def _binding(raw: RawSpec, prefix: tuple[str, ...] = ()) -> Binding:
    """The binding written at `prefix` (the top level, or implementations.NAME)."""
    data = _at(raw.data, prefix)

    def ref(*field: str) -> ImportRef:
        path = (*prefix, *field)
        return ImportRef(_at(raw.data, path), raw.locate(path), ".".join(path))

    convention = data.get("convention", "functional")
    if convention != "layer":
        if data["backward"] == AUTOGRAD:
            return AutogradBinding(ref("forward"))
        return FunctionBinding(convention=convention, forward=ref("forward"), backward=ref("backward"))
    layer = data["layer"]
    params = {
        name: ParamLocation(parse_path(p["value"]), parse_path(p["grad"]) if "grad" in p else None)
        for name, p in (layer.get("params") or {}).items()
    }
    return LayerBinding(
        factory=ref("layer", "class"),
        init=_frozen(layer.get("init") or {}),
        forward=layer.get("forward", "forward"),
        backward=layer.get("backward", "backward"),
        params=_frozen(params),
        output=parse_path(layer["output"]) if "output" in layer else None,
        input_grads=_frozen({k: parse_path(v) for k, v in layer["input_grads"].items()})
        if "input_grads" in layer
        else None,
        locations=_frozen(_layer_locations(raw, prefix)),
    )


#: `backward: autograd`
AUTOGRAD = "autograd"


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def _layer_locations(raw: RawSpec, prefix: tuple[str, ...]) -> dict[str, Location]:
    """Where each layer field was written, keyed by its field name relative to the binding
    ('layer.init'), for errors; located in the file at prefix + field."""
    layer = _at(raw.data, prefix)["layer"]
    fields: list[tuple[str | int, ...]] = [("layer", f) for f in ("init", "forward", "backward", "output")]
    fields += [("layer", "params", n, part) for n, p in (layer.get("params") or {}).items() for part in p]
    fields += [("layer", "input_grads", n) for n in layer.get("input_grads") or {}]
    return {
        ".".join(map(str, f)): raw.locate((*prefix, *f), key=f[-1] in ("forward", "backward")) for f in fields
    }


def _tolerances(raw: RawSpec) -> Mapping[str, Tolerance]:
    given = raw.data.get("tolerances") or {}
    out = {}
    for dtype, default in DEFAULT_TOLERANCES.items():
        t = given.get(dtype, {})
        out[dtype] = default.merged(t.get("rtol"), t.get("atol"), t.get("epsilon"), t.get("reason"))
    return _frozen(out)


def _second_order(raw: RawSpec, first: Spec) -> Spec | None:
    data = raw.data.get("second_order")
    if data is None or not isinstance(first.binding, FunctionBinding):
        return None
    grad_out = TensorSpec(
        name="grad_out",
        role="input",
        shape=tuple(data["grad_out"]["shape"]),
        dtype=None,
        grad=True,
        fill=Fill("normal"),
        location=raw.locate(("second_order", "grad_out"), key=True),
    )
    binding = SecondOrderBinding(
        first=first.binding,
        double_backward=ImportRef(
            data["backward"], raw.locate(("second_order", "backward")), "second_order.backward"
        ),
        first_tensors=tuple(t.name for t in first.tensors),
        first_grads=tuple(t.name for t in first.tensors if t.grad),
    )
    return replace(
        first,
        name=f"{first.name}.second_order",
        binding=binding,
        tensors=(*first.tensors, grad_out),
        cases=_cases(raw, (*first.tensors, grad_out)),
        structure=_frozen({}),  # backward's Jacobian has a structure of its own: detected
    )


def spec_from_validated(raw: RawSpec) -> Spec:
    """Build the model from data that passed schema and semantic validation."""
    first = _first_order(raw)
    if "implementations" in raw.data:
        return replace(first, implementations=_implementations(raw, first))
    return replace(first, second_order=_second_order(raw, first))


def _implementations(raw: RawSpec, contract: Spec) -> tuple[Spec, ...]:
    """Each implementation as a spec of its own: the contract's tensors, cases and
    tolerances with its binding, framework and attrs."""
    out = []
    for name, data in raw.data["implementations"].items():
        out.append(
            replace(
                contract,
                name=f"{contract.name}@{name}",
                binding=_binding(raw, ("implementations", name)),
                attrs=_frozen({**contract.attrs, **(data.get("attrs") or {})}),
                framework=data.get("framework", "numpy"),
                jvp=data.get("jvp") == AUTOGRAD,
                devices=_devices(data.get("device")) if "device" in data else contract.devices,
                implementation=name,
                name_location=raw.locate(("implementations", name), key=True),
            )
        )
    return tuple(out)


def _agreement(raw: RawSpec) -> Mapping[str, AgreementTolerance]:
    given = raw.data.get("agreement") or {}
    return _frozen(
        {d: AgreementTolerance(t.get("rtol"), t.get("atol"), t.get("reason")) for d, t in given.items()}
    )


def _first_order(raw: RawSpec) -> Spec:
    tensors = _tensors(raw)
    data = raw.data
    several = "implementations" in data
    # an abstract base may give part of a binding (or none): only a whole one is bound
    whole = "layer" in data if data.get("convention") == "layer" else {"forward", "backward"} <= set(data)
    bound = not several and whole
    return Spec(
        name=raw.data["name"],
        description=raw.data["description"],
        path=raw.path,
        binding=_binding(raw) if bound else None,
        abstract=bool(data.get("abstract", False)),
        framework=data.get("framework", "numpy"),
        jvp=data.get("jvp") == AUTOGRAD,
        devices=_devices(data.get("device")),
        reference=data.get("reference", next(iter(data["implementations"]))) if several else "",
        agreement=_agreement(raw),
        verified_with=_frozen(data.get("verified_with") or {}),
        tensors=tensors,
        attrs=_frozen(raw.data.get("attrs") or {}),
        dtypes=tuple(raw.data.get("dtypes", ["float32", "float64"])),
        cases=_cases(raw, tensors),
        seed=int(raw.data.get("seed", 42)),
        timeout=float(raw.data["timeout"]) if "timeout" in raw.data else None,
        tolerances=_tolerances(raw),
        name_location=raw.locate(("name",)),
        kinks=raw.data.get("kinks", "subgradient"),
        method=Method(**(raw.data.get("method") or {})),
        contracts_off=frozenset(k for k, on in (raw.data.get("contracts") or {}).items() if not on),
        nondet_tol=float(raw.data.get("nondet_tol", 0.0)),
        structure=_structure(raw.data.get("structure", "auto"), tensors),
    )


def _devices(data: Any) -> tuple[str, ...] | None:
    """`device:` as the devices it names, the CPU first (the reference of the device
    agreement; a list says what the binding supports, not an order)."""
    if data is None:
        return None
    names = ["cpu", "gpu"] if data == "both" else [data] if isinstance(data, str) else data
    return tuple(sorted(names, key=lambda d: d != "cpu"))


def _structure(data: Any, tensors: tuple[TensorSpec, ...]) -> Mapping[str, Structure]:
    """`structure: KIND` applies to every tensor; a mapping names tensors (the rest: auto)."""
    given = {t.name: data for t in tensors} if isinstance(data, str) else dict(data)
    out: dict[str, Structure] = {}
    for name, value in given.items():
        if isinstance(value, str):
            out[name] = value  # type: ignore[assignment]
        else:
            out[name] = tuple(
                Link(
                    int(v["axis"]),
                    int(v.get("output_axis", v["axis"])),
                    -int(v.get("radius", 0)),
                    int(v.get("radius", 0)),
                )
                for v in value
            )
    return _frozen(out)
