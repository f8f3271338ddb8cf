"""One schema per op: fastlm/ops/schemas.py defines it, and the C++ kernels implement exactly it."""
import re

import pytest
import torch

import fastlm.ops  # noqa: F401  (registers every op)
from fastlm.ops._library import has_native_op
from fastlm.ops.schemas import SCHEMAS

# Ops whose plain-torch composition is the CPU implementation (no C++ kernel).
PYTHON_ONLY = {"linear_cross_entropy_fwd", "linear_cross_entropy_bwd", "lora_matmul_fwd", "lora_matmul_bwd",
               "linear_distill_fwd", "linear_distill_bwd"}


def _types(signature: str) -> tuple[list[str], list[str]]:
    """Argument and return types of "(Tensor _0, float _1) -> (Tensor _0, Tensor _1)" or "name(Tensor x) -> Tensor"."""
    args, returns = signature.split("->")
    args = args[args.index("(") + 1:args.rindex(")")]
    returns = returns.strip()
    if returns.startswith("("):
        returns = returns[1:-1]

    def kinds(text):
        # Drop names and alias annotations: "Tensor(a!) out" -> "Tensor".
        return [re.sub(r"\(.*?\)", "", part.strip()).split()[0] for part in text.split(",") if part.strip()]

    return kinds(args), kinds(returns)


def _cpu_kernel_signature(name: str) -> tuple[str, str]:
    """(where the CPU kernel was registered, the signature inferred from its C++ function)."""
    dump = torch._C._dispatch_dump(f"fastlm::{name}")
    match = re.search(r"^CPU: registered at (\S+) :: (.*?) \[", dump, re.M)
    assert match, f"no CPU kernel for fastlm::{name}:\n{dump}"
    return match.group(1), match.group(2)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_registered_schema_is_the_table_one(name):
    schema = getattr(torch.ops.fastlm, name).default._schema
    assert schema == torch._C.parse_schema(f"fastlm::{SCHEMAS[name]}")
    # ... defined once, from Python: no C++ file defines it too.
    where = re.search(r"^debug: registered at (\S+)", torch._C._dispatch_dump(f"fastlm::{name}"), re.M).group(1)
    assert not re.search(r"\.(cpp|cu)\b", where), f"fastlm::{name} is also defined in C++ ({where})"


@pytest.mark.parametrize("name", sorted(set(SCHEMAS) - PYTHON_ONLY))
def test_cpp_kernel_signature_matches_the_table(name):
    assert has_native_op(name), f"fastlm::{name} runs the plain-torch fallback, not the C++ kernel"
    where, signature = _cpu_kernel_signature(name)
    assert re.search(r"csrc/.*\.cpp", where), where
    assert _types(signature) == _types(SCHEMAS[name]), f"C++ {name}{signature} differs from {SCHEMAS[name]}"


def test_python_only_ops_have_no_cpp_kernel():
    for name in PYTHON_ONLY:
        assert not has_native_op(name)


def test_signature_parser_sees_differences():
    """The comparison above can fail: a different type or one argument more is caught."""
    table = _types("op(Tensor(a!) out, Tensor? bias, float scale) -> (Tensor, Tensor)")
    assert table == (["Tensor", "Tensor?", "float"], ["Tensor", "Tensor"])
    assert _types("(Tensor _0, Tensor? _1, float _2) -> (Tensor _0, Tensor _1)") == table
    assert _types("(Tensor _0, Tensor? _1, int _2) -> (Tensor _0, Tensor _1)") != table
    assert _types("(Tensor _0, Tensor? _1, float _2, bool _3) -> (Tensor _0, Tensor _1)") != table
