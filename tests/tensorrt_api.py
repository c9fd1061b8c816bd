"""Which TensorRT Python names a source file uses, and in which versions each must exist.

Reads the code (never imports TensorRT): in a module that binds or receives ``trt``,
every ``trt.A`` / ``trt.A.B`` chain, every member used on a variable that holds a
TensorRT object (:data:`TYPES`, by the project's naming convention, also as
``self.<name>``; chained calls through :data:`RETURNS`), and every
method a subclass of a TensorRT class defines. Each use carries the conditions of the
``if`` / ``else`` / conditional expressions around it; a condition made of
``tensorrt_major(trt) <op> N`` and ``hasattr(trt[.A], "name")`` terms (combined with
``and``, ``or``, ``not``; a local name assigned such an expression counts as it) is
evaluated per version, anything else is unknown (taken as possibly true). A name must
exist in every version for which its conditions may hold.

Also reported: a version branch no supported version takes (dead code for an unsupported
version), and a version guard every supported version passes (needless).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

TYPES = {"builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
         "profile": "IOptimizationProfile", "tensor": "ITensor", "timing": "ITimingCache", "runtime": "Runtime",
         "engine": "ICudaEngine", "context": "IExecutionContext", "logger": "Logger"}
"""Variable name -> the TensorRT class its value is, in functions that use ``trt``."""

RETURNS = {"IBuilderConfig.get_timing_cache": "ITimingCache", "Builder.create_network": "INetworkDefinition",
           "Builder.create_builder_config": "IBuilderConfig", "INetworkDefinition.get_input": "ITensor",
           "Runtime.deserialize_cuda_engine": "ICudaEngine",
           "ICudaEngine.create_execution_context": "IExecutionContext"}
"""Method -> the TensorRT class it returns, for chained calls."""

CALLBACKS = {"IOutputAllocator": ("reallocate_output", "reallocate_output_async", "notify_shape")}
"""Methods TensorRT calls on a Python subclass that its binding module does not list (a
pybind11 trampoline: the class has no such attribute), from the TensorRT Python API
reference (``IOutputAllocator``, on the IExecutionContext page of 10.x and 11.x). Such a
method needs its class to exist; any other method a subclass defines must be a listed
member."""

VERSION_FUNCTION = "tensorrt_major"


@dataclass(frozen=True)
class Version:
    name: str  # "10.16.1.11"
    names: frozenset[str]

    @property
    def major(self) -> int:
        return int(self.name.split(".")[0])


def load_versions(folder: Path) -> list[Version]:
    versions = []
    for file in sorted(folder.glob("*.txt")):
        names = [line for line in file.read_text().splitlines() if line and not line.startswith("#")]
        versions.append(Version(file.stem, frozenset(names)))
    return sorted(versions, key=lambda v: tuple(int(p) for p in v.name.split(".")))


def _chain(node: ast.AST) -> list[str] | None:
    """``trt.A.B`` -> ["trt", "A", "B"]; None when the chain does not end in a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _cmp(op: ast.cmpop, a: int, b: int) -> bool:
    return {ast.Lt: a < b, ast.LtE: a <= b, ast.Gt: a > b, ast.GtE: a >= b, ast.Eq: a == b,
            ast.NotEq: a != b}[type(op)]


class Condition:
    """A condition's value per version: True, False or None (unknown)."""

    def __init__(self, expr: ast.AST, negated: bool, aliases: dict[str, ast.AST]) -> None:
        self.expr, self.negated, self.aliases = expr, negated, aliases
        self.line = expr.lineno

    def value(self, version: Version) -> bool | None:
        v = self._eval(self.expr, version)
        return None if v is None else (not v if self.negated else v)

    def versioned(self) -> bool:
        """Whether some term depends on the version (so the guard is a version branch)."""
        return self._versioned(self.expr)

    def _versioned(self, e: ast.AST) -> bool:
        if isinstance(e, ast.Name) and e.id in self.aliases:
            return self._versioned(self.aliases[e.id])
        if isinstance(e, ast.BoolOp):
            return any(self._versioned(x) for x in e.values)
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            return self._versioned(e.operand)
        return self._term(e, None) is not None

    def _term(self, e: ast.AST, version: Version | None):
        """A version term's value (version None: just whether it is one, as True)."""
        if isinstance(e, ast.Compare) and len(e.ops) == 1 and isinstance(e.left, ast.Call) \
                and isinstance(e.left.func, ast.Name) and e.left.func.id == VERSION_FUNCTION \
                and isinstance(e.comparators[0], ast.Constant) and isinstance(e.comparators[0].value, int):
            return True if version is None else _cmp(e.ops[0], version.major, e.comparators[0].value)
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id == "hasattr" and len(e.args) == 2:
            owner = _chain(e.args[0])
            if owner and owner[0] == "trt" and isinstance(e.args[1], ast.Constant):
                name = ".".join([*owner[1:], e.args[1].value])
                return True if version is None else name in version.names
        return None

    def _eval(self, e: ast.AST, version: Version) -> bool | None:
        if isinstance(e, ast.Name) and e.id in self.aliases:
            return self._eval(self.aliases[e.id], version)
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
            v = self._eval(e.operand, version)
            return None if v is None else not v
        if isinstance(e, ast.BoolOp):
            values = [self._eval(x, version) for x in e.values]
            if isinstance(e.op, ast.And):
                return False if False in values else (None if None in values else True)
            return True if True in values else (None if None in values else False)
        return self._term(e, version)


@dataclass
class Use:
    name: str  # "BuilderFlag.FP16"
    file: str
    line: int
    conditions: tuple[Condition, ...]


class _Visitor(ast.NodeVisitor):
    def __init__(self, file: str) -> None:
        self.file = file
        self.uses: list[Use] = []
        self.guards: list[tuple[Condition, tuple[Condition, ...]]] = []
        self.conditions: tuple[Condition, ...] = ()
        self.aliases: dict[str, ast.AST] = {}
        self.active = False  # in a module that binds or receives `trt`

    # scopes ---------------------------------------------------------------------------
    def visit_Module(self, node: ast.Module) -> None:
        self.active = any((isinstance(n, ast.Name) and n.id == "trt" and isinstance(n.ctx, ast.Store))
                          or (isinstance(n, ast.arg) and n.arg == "trt") for n in ast.walk(node))
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        saved = self.aliases
        self.aliases = dict(self.aliases)
        self.generic_visit(node)
        self.aliases = saved

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            chain = _chain(base)
            if chain and chain[0] == "trt" and len(chain) == 2:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        callback = item.name in CALLBACKS.get(chain[1], ())
                        self._use(chain[1] if callback else f"{chain[1]}.{item.name}", item.lineno)
        self.generic_visit(node)

    # conditions -----------------------------------------------------------------------
    def _branch(self, test: ast.AST, body, orelse) -> None:
        self.visit(test)
        yes, no = Condition(test, False, self.aliases), Condition(test, True, self.aliases)
        for condition, part in ((yes, body), (no, orelse)):
            if condition.versioned() and part:
                self.guards.append((condition, self.conditions))
            saved = self.conditions
            self.conditions = (*saved, condition)
            for child in (part if isinstance(part, list) else [part]):
                self.visit(child)
            self.conditions = saved

    def visit_If(self, node: ast.If) -> None:
        self._branch(node.test, node.body, node.orelse)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._branch(node.test, node.body, node.orelse)

    def visit_Assign(self, node: ast.Assign) -> None:
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self.aliases[node.targets[0].id] = node.value
        self.generic_visit(node)

    # uses -----------------------------------------------------------------------------
    def _use(self, name: str, line: int) -> None:
        if not name.split(".")[-1].startswith("__"):
            self.uses.append(Use(name, self.file, line, self.conditions))

    def _type_of(self, node: ast.AST) -> str | None:
        """The TensorRT class of an expression's value, when known."""
        if isinstance(node, ast.Name):
            return TYPES.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return TYPES.get(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = self._type_of(node.func.value)
            if owner:
                return RETURNS.get(f"{owner}.{node.func.attr}")
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.active:
            chain = _chain(node)
            if chain and chain[0] == "trt":
                if chain[1].startswith("__"):  # trt.__version__
                    return
                self._use(chain[1], node.lineno)
                if len(chain) > 2:
                    self._use(f"{chain[1]}.{chain[2]}", node.lineno)
                return  # (the inner Attribute nodes are the same chain)
            owner = self._type_of(node.value)
            if owner:
                self._use(f"{owner}.{node.attr}", node.lineno)
        self.generic_visit(node)


def uses_in(source: str, file: str = "<source>") -> tuple[list[Use], list]:
    visitor = _Visitor(file)
    visitor.visit(ast.parse(source))
    return visitor.uses, visitor.guards


def problems(sources: dict[str, str], versions: list[Version]) -> list[str]:
    """Every name used where it does not exist, every dead and every needless version
    branch, as readable lines (empty: the code conforms)."""
    found = []
    for file, source in sources.items():
        uses, guards = uses_in(source, file)
        for use in uses:
            missing = [v.name for v in versions
                       if use.name not in v.names and all(c.value(v) is not False for c in use.conditions)]
            if missing:
                found.append(f"{use.file}:{use.line}: trt.{use.name} is used where TensorRT {', '.join(missing)} "
                             "has no such name (guard it with a version branch)")
        for condition, outer in guards:
            reach = [v for v in versions if all(c.value(v) is not False for c in outer)]
            values = {condition.value(v) for v in reach}
            if reach and values == {False}:
                found.append(f"{file}:{condition.line}: a version branch no supported TensorRT version takes")
            elif reach and values == {True} and not condition.negated:
                found.append(f"{file}:{condition.line}: a version guard every supported TensorRT version passes")
    return found
