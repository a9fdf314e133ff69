"""Every bad input of ``tessera.verif.bad_inputs`` is refused in one line that names what is wrong and what is
accepted, with a non-zero exit status, no traceback and nothing simulated or built first; ``docs/bad_inputs.md`` is
the table these runs give."""

from pathlib import Path

import pytest

from tessera.verif.bad_inputs import (
    CASES,
    REGENERATE,
    SIMULATION,
    documented_lines,
    markdown,
    run_case,
    source_locations,
    table_line,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad_inputs.md"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One folder for the module, so the shared models are quantized once per worker."""
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gets_one_line_naming_what_is_wrong_and_accepted(case, root):
    outcome = run_case(case, root)
    seen = "\n".join((f"exit status {outcome.status}, started: {', '.join(outcome.started) or 'nothing'}",
                      "stderr:", *outcome.stderr, outcome.traceback))
    assert not outcome.tracebacks, seen
    if case.warns:      # not refused: the run goes to the end, on the simulator
        assert outcome.started == (SIMULATION,), seen
    else:
        assert not outcome.started, f"{', '.join(outcome.started)} started before the refusal\n{seen}"
    assert outcome.status == case.status, seen
    assert len(outcome.stderr) == 1, seen
    (line,) = outcome.stderr
    assert not source_locations([line]), f"the message shows source locations\n{seen}"
    message = outcome.short(line)
    missing = [name for name in case.names if name not in message]
    assert not missing, f"the message does not name {missing}\n{seen}"
    assert documented_lines(DOC.read_text()).get(case.name) == table_line(case, outcome), \
        f"{DOC.name} is out of date; regenerate: {REGENERATE}"


def test_doc_lists_every_case_once_in_order():
    """Each line is checked against a run above; this checks the rest of the document against those lines."""
    text = DOC.read_text()
    lines = documented_lines(text)
    assert list(lines) == [case.name for case in CASES], f"regenerate: {REGENERATE}"
    assert text == markdown(lines.values()), f"regenerate: {REGENERATE}"


def test_case_names_are_unique():
    """A name is a case's key in the document and its folder."""
    assert len({case.name for case in CASES}) == len(CASES)
