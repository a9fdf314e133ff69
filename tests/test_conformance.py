"""onnx's own node tests of the quantized operators through ``tessera run`` (``tessera.verif.onnx_conformance``).

In-scope cases (int8/uint8/int32/float32 tensors only) equal onnx's expected output; every other case is refused
with a reason naming its type; none fails; ``docs/conformance.md`` is the table this run gives.
"""

from pathlib import Path

import pytest

from tessera.verif.onnx_conformance import (
    QUANTIZED_OPS,
    REGENERATE,
    documented_rows,
    markdown,
    names_type,
    quantized_cases,
    run_case,
    table_line,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"
CASES = quantized_cases()


@pytest.mark.rtl
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_onnx_case_passes_or_is_refused_naming_its_type(case, tmp_path):
    row = run_case(case, tmp_path)
    if row.outcome == "failed":
        pytest.fail(f"failed: {row.detail}\n{row.log}", pytrace=False)
    if case.in_scope:
        assert row.outcome == "passed", f"in scope, yet {row.outcome}: {row.detail}\n{row.log}"
    else:
        assert row.outcome == "refused", f"{', '.join(case.unsupported)} should be refused, yet it passed"
        assert names_type(row.detail, case.unsupported), (f"the reason does not name {' or '.join(case.unsupported)}: "
                                                          f"{row.detail}")
    documented = {r.case: table_line(r) for r in documented_rows(DOC.read_text())}
    assert documented.get(case.name) == table_line(row), f"{DOC.name} is out of date; regenerate: {REGENERATE}"


def test_conformance_doc_lists_every_case_once_with_its_counts():
    """The per-case test checks each line against a run; this checks the rest of the file against those lines."""
    text = DOC.read_text()
    rows = documented_rows(text)
    assert [r.case for r in rows] == [case.name for case in CASES], f"regenerate: {REGENERATE}"
    assert text == markdown(rows), f"regenerate: {REGENERATE}"


def test_every_quantized_operator_has_cases():
    """A renamed operator or case in a new onnx would otherwise shrink the table without a word."""
    assert {case.op for case in CASES} == set(QUANTIZED_OPS)


@pytest.mark.parametrize(("reason", "types", "named"), [
    ("graph input 'x' has element type FLOAT8E4M3FN; supported: ...", ("FLOAT8E4M3FN",), True),
    ("scale is float8_e4m3fn", ("FLOAT8E4M3FN",), True),
    ("expected tensor(float16)", ("FLOAT16",), True),
    ("output 'y' is UINT16", ("INT16",), False),
    ("scale is bfloat16", ("FLOAT16",), False),
    ("zero point is int4", ("UINT4", "INT4"), True),
    ("not supported", ("INT4",), False),
])
def test_a_reason_names_a_type_only_as_a_whole_word(reason, types, named):
    assert names_type(reason, types) is named
