"""The suite's own rules (tests/conftest.py): under CI=true a skip is a failure that says what was missing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

SAMPLE = '''
import pytest

def test_needs_a_tool():
    pytest.skip("the frobnicator is not installed")

@pytest.mark.skipif(True, reason="this CPU lacks VNNI")
def test_needs_a_cpu_feature():
    pass

def test_plain():
    pass
'''


def _run_sample(tmp_path, ci):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_a_skip_fails_and_names_what_is_missing(tmp_path):
    run = _run_sample(tmp_path, "true")
    assert run.returncode == 1, run.stdout
    assert "the frobnicator is not installed" in run.stdout and "this CPU lacks VNNI" in run.stdout
    assert "1 passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1]


def test_outside_ci_a_skip_stays_a_skip(tmp_path):
    run = _run_sample(tmp_path, None)
    assert run.returncode == 0, run.stdout
    assert "1 passed, 2 skipped" in run.stdout
