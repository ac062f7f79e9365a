"""Reading a compiled program: kernels per decode step from its optimized HLO, and its cost (flops, bytes).

    module = parse_hlo(compiled.as_text())
    loop = decode_loop(module)                   # the while loop whose body is one decode step
    kernels = loop_kernels(module, loop)         # {"total": 712, "by_kind": {...}, "by_name": {...}}
    step = summarize_kernels(kernel_costs(module, loop.body))   # flops, bytes, HBM bytes of one iteration
    cost = program_cost(compiled)                # flops / bytes of a whole program, GPU or TPU

A "kernel" is a top-level instruction of a computation that launches work on the device: a fusion, a
custom call (cuBLAS GEMMs, ...), a copy, a collective, an unfused dynamic-update-slice / sort ...; not
the bookkeeping ones (parameter, constant, tuple, get-tuple-element, bitcast, the "-done" half of an
async pair). Nested while loops and conditionals are counted through (a while body times its known
trip count, the largest branch of a conditional). On GPU each kernel is a launch; a TPU runs the whole
step as one program, so there the count is the number of top-level ops, a measure of how finely XLA
split the step, not of launch overhead.

Costs are XLA's cost model, a static estimate, not a measurement. `compiled.cost_analysis()` counts a
while body once and, on GPU, is not available; the target-independent model (through the CPU client)
does not know library calls (a cuBLAS GEMM counts -1: their flops and bytes are added from their shapes
here) nor memory spaces: `kernel_costs` analyses each instruction on its own and keeps the bytes of the
operands / results that live in device memory (memory space 0, padded to their layout's tiles), which
on TPU leaves out the VMEM / SMEM staging that TPU's own whole-program count adds.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

# Instructions that do not launch work of their own.
NO_KERNEL = frozenset({
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "add-dependency",
    "opt-barrier", "domain", "partition-id", "replica-id", "iota-reshape",
    # the second half of an async pair (the start is the kernel; any other "*-done" too)
    "all-reduce-done", "all-gather-done", "collective-permute-done", "copy-done", "async-done",
    "async-update", "send-done", "recv-done", "slice-done",
})
COLLECTIVES = frozenset({
    "all-reduce", "all-reduce-start", "all-gather", "all-gather-start", "reduce-scatter", "all-to-all",
    "collective-permute", "collective-permute-start", "collective-broadcast", "ragged-all-to-all",
})
# computation-valued attributes: name -> whether the callee runs as separate kernels
# (body / condition / branches / call: yes; a fusion's or reduce's computation: no, it is inside the kernel)
_CALLEE_ATTRS = ("calls", "to_apply", "body", "condition", "true_computation", "false_computation")

_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e5m2fnuz": 1,
    "f8e4m3fnuz": 1, "f8e4m3b11fnuz": 1, "f8e8m0fnu": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
    "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0,
}


@dataclass
class Instruction:
    name: str
    opcode: str
    shape: str  # the result shape as printed ("bf16[8,96]{1,0}", or a tuple "(...)")
    operands: list[str]
    attrs: str  # everything after the operand list
    root: bool = False

    def attr(self, key: str) -> str | None:
        """A `key=value` attribute (a computation name without its %, a quoted string unquoted)."""
        m = re.search(rf"(?:^|[\s,]){re.escape(key)}=(\"(?:[^\"\\\\]|\\\\.)*\"|%?[\w.\-$]+)", self.attrs)
        if not m:
            return None
        value = m.group(1)
        return value[1:-1] if value.startswith('"') else value.lstrip("%")

    def callees(self) -> list[str]:
        out = [self.attr(k) for k in _CALLEE_ATTRS]
        m = re.search(r"branch_computations=\{([^}]*)\}", self.attrs)
        if m:
            out += [c.strip().lstrip("%") for c in m.group(1).split(",") if c.strip()]
        return [c for c in out if c]

    def backend_kind(self) -> str | None:
        """The fusion kind a kCustom GPU fusion carries in its backend config ("__triton", "__cudnn$fusion")."""
        m = re.search(r'"fusion_backend_config":\{"kind":"([^"]+)"', self.attrs) or \
            re.search(r'"kind":"([^"]+)"', self.attrs)
        return m.group(1) if m else None

    def known_trip_count(self) -> int | None:
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"', self.attrs)
        return int(m.group(1)) if m else None


@dataclass
class Computation:
    name: str
    instructions: list[Instruction] = field(default_factory=list)
    entry: bool = False
    text: str = ""  # the computation as printed (header to closing brace)


@dataclass
class HloModuleText:
    computations: dict[str, Computation]
    entry: str
    header: str

    def instruction(self, computation: str, name: str) -> Instruction | None:
        for inst in self.computations[computation].instructions:
            if inst.name == name:
                return inst
        return None


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start] ("(" or "{")."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    i = start
    in_str = False
    while i < len(text):
        ch = text[i]
        if in_str:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in pairs:
            stack.append(pairs[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    return len(text)


def _parse_instruction(line: str) -> Instruction | None:
    s = line.strip()
    root = s.startswith("ROOT ")
    if root:
        s = s[5:]
    m = re.match(r"%?([\w.\-]+)\s*=\s*", s)
    if not m:
        return None
    name, rest = m.group(1), s[m.end():]
    if rest.startswith("("):  # tuple shape
        end = _balanced(rest, 0)
        shape, rest = rest[:end], rest[end:].lstrip()
    else:
        sm = re.match(r"\S+", rest)
        shape, rest = sm.group(0), rest[sm.end():].lstrip()
    om = re.match(r"([\w\-]+)\(", rest)
    if not om:
        return None
    opcode = om.group(1)
    end = _balanced(rest, om.end() - 1)
    operand_text = rest[om.end():end - 1]
    operands = re.findall(r"%([\w.\-]+)", operand_text)
    if not operands and opcode not in ("constant", "parameter", "iota", "rng-get-and-update-state"):
        # printed without % sigils: names are the tokens that are not literals or shapes
        operands = [t for t in re.split(r"[\s,]+", operand_text) if re.match(r"^[A-Za-z_][\w.\-]*$", t)]
    return Instruction(name, opcode, shape, operands, rest[end:].lstrip(", "), root)


def parse_hlo(text: str) -> HloModuleText:
    """Optimized HLO text (`compiled.as_text()`) -> its computations and their instructions."""
    computations: dict[str, Computation] = {}
    entry = ""
    header_lines = []
    current: Computation | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.startswith(" "):
                current = Computation(m.group(2), entry=bool(m.group(1)))
                lines = [line]
                if current.entry:
                    entry = current.name
            elif not computations and line.startswith("HloModule"):
                header_lines.append(line)
            continue
        lines.append(line)
        if line.strip() == "}" and not line.startswith("  "):
            current.text = "\n".join(lines)
            computations[current.name] = current
            current = None
            continue
        inst = _parse_instruction(line)
        if inst is not None:
            current.instructions.append(inst)
    if not entry:
        raise ValueError("no ENTRY computation in this HLO text")
    return HloModuleText(computations, entry, "\n".join(header_lines))


# -------------------------------------------------------------------------------------------------
# the decode loop and its kernels


@dataclass(frozen=True)
class WhileLoop:
    name: str
    computation: str  # where the while instruction is
    body: str
    condition: str
    known_trip_count: int | None


def while_loops(module: HloModuleText) -> list[WhileLoop]:
    """Every while instruction of the module (in any computation)."""
    out = []
    for comp in module.computations.values():
        for inst in comp.instructions:
            if inst.opcode == "while":
                out.append(WhileLoop(inst.name, comp.name, inst.attr("body"), inst.attr("condition"),
                                     inst.known_trip_count()))
    return out


def _reachable(module: HloModuleText, name: str) -> list[str]:
    """`name` and every computation it calls, transitively; callees before their callers."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(c: str, depth: int) -> None:
        if c in seen or c not in module.computations:
            return
        if depth > 256:
            raise ValueError("HLO call graph too deep")
        seen.add(c)
        for inst in module.computations[c].instructions:
            for callee in inst.callees():
                visit(callee, depth + 1)
        order.append(c)

    visit(name, 0)
    return order[::-1]  # `name` first


def decode_loop(module: HloModuleText) -> WhileLoop:
    """The decode loop: the outermost while loop of the entry computation (and what it calls) with the
    largest body (an unknown trip count: it runs to a traced end)."""
    outer = set(_reachable(module, module.entry))
    candidates = [w for w in while_loops(module) if w.computation in outer]
    # drop loops nested in another loop's body
    nested = set()
    for w in candidates:
        nested.update(_reachable(module, w.body)[1:])
    candidates = [w for w in candidates if w.computation not in nested] or candidates
    if not candidates:
        raise ValueError("no while loop in this program: is it the decode loop?")
    return max(candidates, key=lambda w: sum(len(module.computations[c].instructions)
                                             for c in _reachable(module, w.body)))


def kernel_kind(inst: Instruction) -> str | None:
    """The breakdown key of an instruction that launches a kernel ("fusion:kLoop", "fusion:__triton",
    "custom-call:__cublas$lt$matmul", "copy", "collective:all-reduce-start", ...), or None."""
    op = inst.opcode
    if op in NO_KERNEL or op.endswith("-done") or op in ("while", "conditional", "call"):
        return None
    if op == "fusion":
        kind = inst.attr("kind") or "?"
        if kind == "kCustom":
            kind = inst.backend_kind() or kind
        return f"fusion:{kind}"
    if op == "custom-call":
        return f"custom-call:{inst.attr('custom_call_target') or '?'}"
    if op in COLLECTIVES:
        return f"collective:{op}"
    if op == "async-start":
        callee = inst.attr("calls")
        return f"async:{callee}" if callee else "async"
    return op


def count_kernels(module: HloModuleText, computation: str, *, _depth: int = 0) -> dict[str, Any]:
    """Kernels one run of `computation` launches: {"total", "by_kind", "unknown_trip_counts"}.

    Nested loops count their body (and condition) times their known trip count (once, and listed in
    unknown_trip_counts, when XLA does not know it); a conditional counts its largest branch."""
    if _depth > 32:
        raise ValueError("HLO nesting too deep")
    by_kind: dict[str, int] = {}
    by_name: dict[str, int] = {}
    unknown: list[str] = []

    def add(sub: dict[str, Any], times: int = 1):
        for table, counts in ((by_kind, sub["by_kind"]), (by_name, sub["by_name"])):
            for k, v in counts.items():
                table[k] = table.get(k, 0) + v * times

    for inst in module.computations[computation].instructions:
        if inst.opcode == "while":
            trips = inst.known_trip_count()
            if trips is None:
                unknown.append(inst.name)
                trips = 1
            for callee in (inst.attr("body"), inst.attr("condition")):
                sub = count_kernels(module, callee, _depth=_depth + 1)
                add(sub, trips)
                unknown += sub["unknown_trip_counts"]
        elif inst.opcode == "conditional":
            branches = [count_kernels(module, c, _depth=_depth + 1) for c in inst.callees()]
            if branches:
                big = max(branches, key=lambda b: b["total"])
                add(big)
                unknown += big["unknown_trip_counts"]
        elif inst.opcode == "call":
            for callee in inst.callees():
                sub = count_kernels(module, callee, _depth=_depth + 1)
                add(sub)
                unknown += sub["unknown_trip_counts"]
        else:
            kind = kernel_kind(inst)
            if kind is not None:
                by_kind[kind] = by_kind.get(kind, 0) + 1
                stem = kernel_label(inst.name, kind)
                by_name[stem] = by_name.get(stem, 0) + 1
    return {"total": sum(by_kind.values()), "by_kind": _sorted(by_kind), "by_name": _sorted(by_name),
            "unknown_trip_counts": unknown}


def name_stem(name: str) -> str:
    """An instruction name without its numeric suffixes ("loop_pad_fusion.13" -> "loop_pad_fusion",
    "wrapped_convert.4" -> "wrapped_convert"): XLA names kernels by what they do."""
    return re.sub(r"(\.\d+)+$", "", name)


def kernel_label(name: str, kind: str) -> str:
    """The name stem, with the kind when the name says nothing ("fusion.282" -> "fusion[__triton]")."""
    stem = name_stem(name)
    if stem in ("fusion", "custom-call", "copy-start", "slice-start", "async-start"):
        detail = kind.split(":", 1)[-1]
        return f"{stem}[{detail}]" if detail != stem else stem
    return stem


def _sorted(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def loop_kernels(module: HloModuleText, loop: WhileLoop | None = None) -> dict[str, Any]:
    """Kernels per iteration of the decode loop: its body plus its condition (both run every step)."""
    loop = loop or decode_loop(module)
    body = count_kernels(module, loop.body)
    cond = count_kernels(module, loop.condition)
    merged = {}
    for key in ("by_kind", "by_name"):
        table = dict(body[key])
        for k, v in cond[key].items():
            table[k] = table.get(k, 0) + v
        merged[key] = _sorted(table)
    return {"total": body["total"] + cond["total"], "body": body["total"], "condition": cond["total"],
            "by_kind": merged["by_kind"], "by_name": merged["by_name"],
            "unknown_trip_counts": body["unknown_trip_counts"] + cond["unknown_trip_counts"]}


# -------------------------------------------------------------------------------------------------
# cost (flops, bytes accessed)


def array_shapes(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """'(bf16[8,96]{1,0}, s8[4194304]{0})' -> [('bf16', (8, 96)), ('s8', (4194304,))]."""
    out = []
    for dtype, dims in re.findall(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]", shape):
        if dtype in _DTYPE_BYTES:
            out.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return out


def shape_bytes(shape: str) -> float:
    return sum(_DTYPE_BYTES[d] * math.prod(dims) for d, dims in array_shapes(shape))


def _shape_of(module: HloModuleText, computation: str, name: str) -> str:
    inst = module.instruction(computation, name)
    return inst.shape if inst is not None else ""


def library_call_cost(module: HloModuleText, computation: str, inst: Instruction) -> dict[str, float] | None:
    """Flops and bytes of a GEMM library call (cuBLAS / cuBLASLt / hipBLASLt) from its shapes and
    dot dimensions; None for other custom calls. Bytes: operands read once, the result written once
    (its workspace buffer excluded)."""
    target = inst.attr("custom_call_target") or ""
    if not any(k in target for k in ("cublas", "gemm", "hipblas")):
        return None
    out = array_shapes(inst.shape)
    if not out:
        return None
    out_dtype, out_dims = out[0]
    operand_shapes = [array_shapes(_shape_of(module, computation, o)) for o in inst.operands]
    if len(operand_shapes) < 2 or not operand_shapes[0] or not operand_shapes[1]:
        return None
    lhs = operand_shapes[0][0][1]
    m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', inst.attrs)
    contracting = [int(x.strip('"')) for x in m.group(1).split(",") if x.strip()] if m else [len(lhs) - 1]
    k = math.prod(lhs[i] for i in contracting)
    flops = 2.0 * math.prod(out_dims) * k
    read = sum(_DTYPE_BYTES[d] * math.prod(dims) for shapes in operand_shapes for d, dims in shapes[:1])
    written = _DTYPE_BYTES[out_dtype] * math.prod(out_dims)
    return {"flops": flops, "bytes_accessed": read + written}


def _cost_dict(raw: Any) -> dict[str, float]:
    if isinstance(raw, (list, tuple)):
        raw = raw[0] if raw else {}
    raw = raw or {}
    return {"flops": float(raw.get("flops", 0.0)), "bytes_accessed": float(raw.get("bytes accessed", 0.0)),
            "transcendentals": float(raw.get("transcendentals", 0.0))}


def _cpu_client():
    import jax

    return jax.devices("cpu")[0].client


def _library_corrections(module: HloModuleText, computations: list[str]) -> tuple[dict[str, float], int]:
    """Flops/bytes of the GEMM library calls among `computations` (+1 each: the cost model counted -1)."""
    extra = {"flops": 0.0, "bytes_accessed": 0.0}
    calls = 0
    for c in computations:
        for inst in module.computations[c].instructions:
            if inst.opcode != "custom-call":
                continue
            cost = library_call_cost(module, c, inst)
            if cost is None:
                continue
            calls += 1
            extra["flops"] += cost["flops"] + 1.0
            extra["bytes_accessed"] += cost["bytes_accessed"] + 1.0
    return extra, calls


def _analyse(hlo_module, module: HloModuleText, computations: list[str]) -> dict[str, float]:
    from jax._src.lib import _jax

    cost = _cost_dict(_jax.hlo_module_cost_analysis(_cpu_client(), hlo_module))
    extra, calls = _library_corrections(module, computations)
    cost["flops"] += extra["flops"]
    cost["bytes_accessed"] += extra["bytes_accessed"]
    cost["library_calls_added"] = calls
    return cost


def native_cost(compiled) -> dict[str, float] | None:
    """The backend's own cost analysis of a compiled program (TPU; None on GPU, where there is none)."""
    try:
        raw = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        return None
    return _cost_dict(raw) if raw else None


def program_cost(compiled, platform: str | None = None) -> dict[str, float]:
    """flops / bytes accessed / transcendentals of a compiled program (a while body counted once).

    TPU (and any backend with a cost model): `compiled.cost_analysis()`. GPU: the optimized module through
    the CPU client's cost model, plus the GEMM library calls it cannot see (`library_call_cost`)."""
    raw = None
    try:
        raw = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        raw = None
    if raw and platform != "cuda":
        cost = _cost_dict(raw)
        cost["source"] = "compiled.cost_analysis()"
        return cost
    module = parse_hlo(compiled.as_text())
    hlo_module = compiled.runtime_executable().hlo_modules()[0]
    cost = _analyse(hlo_module, module, list(module.computations))
    cost["source"] = "XLA cost model (CPU client) on the optimized module + GEMM library calls from shapes"
    return cost


def computation_module_text(module: HloModuleText, computation: str) -> str:
    """An HLO module whose entry is `computation` (with everything it calls), for cost analysis of one
    iteration of a loop body on its own."""
    names = _reachable(module, computation)
    parts = ["HloModule " + re.sub(r"[^\w.\-]", "_", computation)]
    for name in reversed(names):  # callees first
        text = re.sub(r",?\s*stack_frame_id=\d+", "", module.computations[name].text)
        text = re.sub(r"^ENTRY\s+", "", text)
        if name == computation:
            text = "ENTRY " + text
        parts.append(text)
    return "\n\n".join(parts) + "\n"


def computation_cost(module: HloModuleText, computation: str) -> dict[str, float]:
    """Cost of one run of `computation` (e.g. a decode loop body) through the CPU client's cost model,
    plus GEMM library calls from their shapes. Layout-aware for tiled (TPU) layouts only as far as XLA's
    generic shape sizes are."""
    import jaxlib._hlo as hlo

    names = _reachable(module, computation)
    hlo_module = hlo.hlo_module_from_text(computation_module_text(module, computation))
    cost = _analyse(hlo_module, module, names)
    cost["source"] = "XLA cost model (CPU client) on the loop body of the optimized module"
    return cost


# -------------------------------------------------------------------------------------------------
# whole-program cost with every loop body counted by its trip count (a train step's scanned layers)


def _scalar_constant(comp: Computation, name: str) -> int | None:
    """The value of the integer scalar constant `name` of `comp`, else None."""
    m = re.search(rf"(?<![\w.\-])%?{re.escape(name)} = [su](?:32|64)\[\]\S* constant\((\d+)\)", comp.text)
    return int(m.group(1)) if m else None


def trip_count(module: HloModuleText, loop: WhileLoop) -> int:
    """A while loop's trip count: XLA's known_trip_count (GPU); else (TPU) the bound its condition compares
    the induction variable with (less-than), over the step the body adds to it (TPU's 'wide' loops add 2),
    counting from 0. 1 when neither can be read."""
    if loop.known_trip_count:
        return loop.known_trip_count
    cond = module.computations.get(loop.condition)
    compare = next((i for i in cond.instructions if i.opcode == "compare" and "direction=LT" in i.attrs),
                   None) if cond else None
    if compare is None:
        return 1
    defs = {i.name: i for i in cond.instructions}
    bound = next((v for v in (_scalar_constant(cond, n) for n in compare.operands) if v is not None), None)
    if bound is None:
        return 1
    index = next((defs[n].attr("index") for n in compare.operands
                  if n in defs and defs[n].opcode == "get-tuple-element"), None)
    body = module.computations.get(loop.body)
    step = 1
    root = next((i for i in body.instructions if i.root and i.opcode == "tuple"), None) if body else None
    if root is not None and index is not None and int(index) < len(root.operands):
        update = next((i for i in body.instructions if i.name == root.operands[int(index)]), None)
        if update is not None and update.opcode == "add":
            step = next((v for v in (_scalar_constant(body, n) for n in update.operands) if v), 1)
    return max(1, -(-bound // step))


def _tuple_parts(shape: str) -> list[str]:
    """'(a, (b, c), d)' -> ['a', '(b, c)', 'd']; an array shape -> [it]."""
    if not shape.startswith("("):
        return [shape]
    parts, start, i = [], 1, 1
    while i < len(shape) - 1:
        if shape[i] in "([{":
            i = _balanced(shape, i)
            continue
        if shape[i] == ",":
            parts.append(shape[start:i].strip())
            start = i + 1
        i += 1
    last = shape[start:len(shape) - 1].strip()
    return parts + ([last] if last else [])


def collective_bytes(inst: Instruction) -> float:
    """Bytes a collective delivers: its result (of an async all-gather / permute / all-to-all start, whose
    shape is (operands, results, ...): the results part); 0 for other instructions."""
    if inst.opcode not in COLLECTIVES and inst.opcode not in ("all-to-all-start", "reduce-scatter-start"):
        return 0.0
    shape = inst.shape
    if inst.opcode.endswith("-start") and not inst.opcode.startswith("all-reduce"):
        parts = _tuple_parts(shape)
        shape = parts[1] if len(parts) > 1 else shape
    return shape_bytes(shape)


def loop_aware_cost(module: HloModuleText) -> dict[str, Any]:
    """Flops, bytes and collective bytes of a whole (per-device) program with every while body counted
    trip-count times (`computation_cost` of each body; `compiled.cost_analysis()` counts a body once).
    Also the once-counted figures (`*_once`) and the loops' trip counts."""
    loops: dict[str, list[tuple[str, int]]] = {}
    for w in while_loops(module):
        loops.setdefault(w.computation, []).append((w.body, trip_count(module, w)))
    costs: dict[str, dict[str, float]] = {}

    def cost(name: str) -> dict[str, float]:
        if name not in costs:
            costs[name] = computation_cost(module, name)
        return costs[name]

    def full(name: str, key: str) -> float:  # `name` once, each loop body in it: trips x (its own full cost)
        return cost(name)[key] + sum(trips * full(body, key) - cost(body)[key] for body, trips in loops.get(name, []))

    delivered: dict[str, float] = {}

    def collectives(name: str) -> float:  # of `name` and what it calls, loop bodies x trip counts
        if name not in delivered:
            delivered[name] = 0.0  # (a cycle would stop here)
            trips = dict(loops.get(name, []))
            total = 0.0
            for inst in module.computations[name].instructions:
                total += collective_bytes(inst)
                if inst.opcode in ("async-update", "async-done"):  # the async-start's computation, again
                    continue
                total += sum(trips.get(c, 1) * collectives(c) for c in inst.callees() if c in module.computations)
            delivered[name] = total
        return delivered[name]

    entry = module.entry
    return {"flops": full(entry, "flops"), "bytes_accessed": full(entry, "bytes_accessed"),
            "flops_once": cost(entry)["flops"], "bytes_accessed_once": cost(entry)["bytes_accessed"],
            "collective_bytes": collectives(entry), "loops": sorted(n for ls in loops.values() for _, n in ls)}


# -------------------------------------------------------------------------------------------------
# per-kernel cost: each top-level instruction analysed on its own (bytes by operand, memory spaces)


def _memory_space(layout: str) -> int:
    m = re.search(r"S\((\d+)\)", layout or "")
    return int(m.group(1)) if m else 0


def _arrays_with_layout(shape: str) -> list[tuple[str, tuple[int, ...], str]]:
    """'(bf16[8,96]{1,0:T(8,128)S(1)}, u32[]{:S(2)})' -> [(dtype, dims, layout), ...] in tuple order
    (a nested tuple flattened)."""
    out = []
    for m in re.finditer(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\](\{[^{}]*(?:\([^)]*\)[^{}]*)*\})?", shape):
        if m.group(1) in _DTYPE_BYTES:
            dims = tuple(int(d) for d in m.group(2).split(",") if d)
            out.append((m.group(1), dims, m.group(3) or ""))
    return out


def padded_bytes(dtype: str, dims: tuple[int, ...], layout: str) -> float:
    """Bytes of an array in memory with its layout's tiling (TPU: T(8,128) pads the two minor dims)."""
    n = _DTYPE_BYTES[dtype] * math.prod(dims)
    tile = re.search(r"T\(([\d,]+)\)", layout)
    order = re.match(r"\{([\d,]+)", layout)
    if not (tile and order and dims):
        return n
    minor = [int(x) for x in order.group(1).split(",") if x]
    sizes = list(dims)
    for k, t in enumerate(reversed([int(x) for x in tile.group(1).split(",") if x])):
        if k < len(minor) and minor[k] < len(sizes):
            sizes[minor[k]] = -(-sizes[minor[k]] // t) * t
    return _DTYPE_BYTES[dtype] * math.prod(sizes)


def _drop_attr(attrs: str, key: str) -> str:
    i = attrs.find(key + "=")
    if i < 0:
        return attrs
    j = i + len(key) + 1
    end = _balanced(attrs, j) if j < len(attrs) and attrs[j] in "{(" else (attrs.find(",", j) % (len(attrs) + 1))
    return (attrs[:i] + attrs[end:]).replace(", ,", ",").strip(", ")


def _strip_layouts(shape: str) -> str:
    """'bf16[8,96]{1,0:T(8,128)}' -> 'bf16[8,96]' (a computation signature takes shapes without layouts)."""
    return re.sub(r"\]\{[^{}]*(?:\([^)]*\)[^{}]*)*\}", "]", re.sub(r"/\*[^*]*\*/", "", shape))


def instruction_module_text(module: HloModuleText, computation: str, inst: Instruction) -> str:
    """A module whose entry runs `inst` alone on parameters shaped as its operands."""
    comp = module.computations[computation]
    shapes = {i.name: i.shape for i in comp.instructions}
    params, names = [], []
    for k, operand in enumerate(inst.operands):
        params.append(f"  %p{k} = {shapes[operand]} parameter({k})")
        names.append(f"%p{k}")
    attrs = inst.attrs
    for key in ("control-predecessors", "metadata", "frontend_attributes", "sharding"):
        attrs = _drop_attr(attrs, key)
    line = f"  ROOT %k = {inst.shape} {inst.opcode}({', '.join(names)})" + (f", {attrs}" if attrs else "")
    callees = []
    for callee in inst.callees():
        for name in reversed(_reachable(module, callee)):
            if name not in callees:
                callees.append(name)
    sig = ", ".join(f"p{k}: {_strip_layouts(shapes[o])}" for k, o in enumerate(inst.operands))
    parts = ["HloModule kernel"]
    parts += [re.sub(r",?\s*stack_frame_id=\d+", "", re.sub(r"^ENTRY\s+", "", module.computations[c].text))
              for c in callees]
    parts.append(f"ENTRY %main ({sig}) -> {_strip_layouts(inst.shape)} {{\n"
                 + "\n".join(params + [line]) + "\n}")
    return "\n\n".join(parts) + "\n"


def _index_bytes(cost: dict[str, float], prefix: str) -> dict[str, float]:
    """{'{}': b, '{0}': b0, ...} of the keys 'bytes accessed<prefix>{...}'."""
    out = {}
    for key, value in cost.items():
        if key.startswith("bytes accessed" + prefix + "{"):
            out[key[len("bytes accessed" + prefix):]] = float(value)
    return out


def _hbm_share(shape: str, by_index: dict[str, float]) -> float:
    """Bytes of an operand / result that go to device memory (memory space 0), padded to its tiles:
    XLA's count per tuple index, scaled by padded / dense size, zero for arrays in other memory spaces
    (TPU VMEM S(1), SMEM S(2): on chip)."""
    arrays = _arrays_with_layout(shape)
    total = 0.0
    for index, value in by_index.items():
        idx = [int(x) for x in index.strip("{}").split(",") if x.strip()]
        if value <= 0:
            continue
        if not idx:  # the whole value: sum its arrays' shares
            dense = sum(_DTYPE_BYTES[d] * math.prod(dims) for d, dims, _ in arrays) or 1.0
            for d, dims, layout in arrays:
                if _memory_space(layout) == 0:
                    part = _DTYPE_BYTES[d] * math.prod(dims)
                    total += value * part / dense * (padded_bytes(d, dims, layout) / part if part else 1.0)
            continue
        if idx[0] < len(arrays):
            d, dims, layout = arrays[idx[0]]
            part = _DTYPE_BYTES[d] * math.prod(dims)
            if _memory_space(layout) == 0:
                total += value * (padded_bytes(d, dims, layout) / part if part else 1.0)
    return total


def _result_shape(inst: Instruction, shapes: dict[str, str]) -> str:
    """The part of an instruction's result that its work writes: for an async start, whose result is
    (destination, source, context) for copy-start and ((operands), output, context) for the others, the
    destination / output array alone."""
    if not inst.opcode.endswith("-start"):
        return inst.shape
    arrays = re.findall(r"\b[a-z]+\d*[a-z0-9]*\[[\d,]*\](?:\{[^{}]*\})?", inst.shape)
    if inst.opcode == "copy-start":
        return arrays[0] if arrays else inst.shape
    n_in = sum(len(_arrays_with_layout(shapes.get(o, ""))) for o in inst.operands)
    return arrays[n_in] if len(arrays) > n_in else inst.shape


def kernel_costs(module: HloModuleText, computation: str, *, times: int = 1,
                 _depth: int = 0) -> list[dict[str, Any]]:
    """Every kernel of one run of `computation` (nested loops x known trip counts, the largest branch of
    a conditional) with its cost: [{name, kind, flops, bytes, hbm_bytes, times}], where `bytes` is
    XLA's count for the instruction alone and `hbm_bytes` the part that reaches device memory (operands
    and results in memory space 0, padded to their layout's tiles; on GPU the same as `bytes`).

    Each instruction is analysed as a module of its own (XLA's cost model knows what a fusion reads of
    each operand: a dynamic-update-slice in place writes only its update, a slice reads only its part);
    GEMM library calls come from their shapes. An instruction that does not parse alone is counted as
    all its operands read and its result written (`approx`: True)."""
    import jaxlib._hlo as hlo_lib
    from jax._src.lib import _jax

    if _depth > 32:
        raise ValueError("HLO nesting too deep")
    client = _cpu_client()
    out: list[dict[str, Any]] = []
    comp = module.computations[computation]
    shapes = {i.name: i.shape for i in comp.instructions}
    for inst in comp.instructions:
        if inst.opcode == "while":
            trips = inst.known_trip_count() or 1
            for callee in (inst.attr("body"), inst.attr("condition")):
                out += kernel_costs(module, callee, times=times * trips, _depth=_depth + 1)
            continue
        if inst.opcode == "conditional":
            branches = [kernel_costs(module, c, times=times, _depth=_depth + 1) for c in inst.callees()]
            if branches:
                out += max(branches, key=lambda b: sum(k["hbm_bytes"] for k in b))
            continue
        if inst.opcode == "call":
            for callee in inst.callees():
                out += kernel_costs(module, callee, times=times, _depth=_depth + 1)
            continue
        kind = kernel_kind(inst)
        if kind is None:
            continue
        entry = {"name": inst.name, "kind": kind, "times": times, "approx": False}
        library = library_call_cost(module, computation, inst) if inst.opcode == "custom-call" else None
        try:
            cost = dict(_jax.hlo_module_cost_analysis(
                client, hlo_lib.hlo_module_from_text(instruction_module_text(module, computation, inst))))
        except Exception:  # noqa: BLE001 - count it the plain way
            cost = None
        if library is not None:
            entry["flops"] = library["flops"]
            entry["bytes"] = library["bytes_accessed"]
            operands = sum(padded_bytes(d, dims, l) for o in inst.operands
                           for d, dims, l in _arrays_with_layout(shapes.get(o, ""))[:1]
                           if _memory_space(l) == 0)
            result = [a for a in _arrays_with_layout(inst.shape)[:1] if _memory_space(a[2]) == 0]
            entry["hbm_bytes"] = operands + sum(padded_bytes(*a) for a in result)
        elif cost is not None:
            entry["flops"] = max(0.0, float(cost.get("flops", 0.0)))
            entry["bytes"] = max(0.0, float(cost.get("bytes accessed", 0.0)))
            hbm = _hbm_share(_result_shape(inst, shapes), _index_bytes(cost, "out"))
            for k, operand in enumerate(inst.operands):
                hbm += _hbm_share(shapes.get(operand, ""), _index_bytes(cost, str(k)))
            entry["hbm_bytes"] = hbm
        else:
            entry["approx"] = True
            entry["flops"] = 0.0
            arrays = [a for o in inst.operands for a in _arrays_with_layout(shapes.get(o, ""))] + \
                _arrays_with_layout(inst.shape)
            entry["bytes"] = float(sum(_DTYPE_BYTES[d] * math.prod(dims) for d, dims, _ in arrays))
            entry["hbm_bytes"] = float(sum(padded_bytes(d, dims, l) for d, dims, l in arrays
                                           if _memory_space(l) == 0))
        out.append(entry)
    return out


def summarize_kernels(kernels: list[dict[str, Any]], top: int = 12) -> dict[str, Any]:
    """Totals of `kernel_costs` (each kernel x its times) and the kernel names that move the most bytes."""
    total = {"flops": 0.0, "bytes_accessed": 0.0, "hbm_bytes": 0.0, "approx": 0}
    by_name: dict[str, dict[str, float]] = {}
    for k in kernels:
        t = k["times"]
        total["flops"] += k["flops"] * t
        total["bytes_accessed"] += k["bytes"] * t
        total["hbm_bytes"] += k["hbm_bytes"] * t
        total["approx"] += int(k["approx"]) * t
        row = by_name.setdefault(kernel_label(k["name"], k["kind"]), {"count": 0, "hbm_bytes": 0.0, "flops": 0.0})
        row["count"] += t
        row["hbm_bytes"] += k["hbm_bytes"] * t
        row["flops"] += k["flops"] * t
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1]["hbm_bytes"])
    total["top_by_bytes"] = {name: row for name, row in ranked[:top]}
    return total


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)
