"""Suite-wide rules.

Under ``CI=true`` a skipped test fails instead, saying what it skipped for: CI installs every tool and runs on a
CPU where the golden model is bit-exact against onnxruntime, so a skip there means a broken install, not a missing
option.

Tests marked ``slow`` are collected first: pytest-xdist hands tests out in collection order, and a two-minute test
handed out last keeps the run going on one worker after the others have finished.
"""

import os

import pytest


def ci_forbids_skips():
    return os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and ci_forbids_skips():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"CI=true: this test would have been skipped ({reason}); CI has every tool, "
                           f"so fix the install")
    return report


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)     # stable: otherwise in file order
