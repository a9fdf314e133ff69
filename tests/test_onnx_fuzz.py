"""Importer fuzzing, a fixed-seed sample (``make soak-fuzz`` runs it for a time budget): every mutated model and
input runs and matches onnxruntime, or is refused in one line; never a traceback, a hang or a crash."""

import dataclasses

import numpy as np
import onnx
import pytest

from tessera.verif.onnx_fuzz import (
    SEED_MODELS,
    fuzz,
    make_case,
    run_case,
    seed_model,
)

#: The host sample: 4 chunks (so two workers share it) of 20 cases.
HOST_CHUNKS, HOST_CHUNK = 4, 20
SIM_SEEDS = range(9000, 9012)


def _check(result):
    """Fail on any failure, naming its seed (``python -m tessera.verif.onnx_fuzz --seed S --count 1`` reruns it)."""
    if result.failures:
        pytest.fail("\n".join([result.summary(), *map(str, result.failures)]), pytrace=False)


@pytest.mark.parametrize("chunk", range(HOST_CHUNKS))
def test_mutated_models_run_or_are_refused_in_one_line_on_the_host(chunk):
    seeds = range(chunk * HOST_CHUNK, (chunk + 1) * HOST_CHUNK)
    result = fuzz(seeds.start, len(seeds), "host")
    assert result.cases == len(seeds)
    _check(result)


#: Seeds of soak failures, fixed: pads of 2**31 (a 384 GiB allocation), a weight DequantizeLinear without its axis
#: and an int32-minimum bias on an int8 model (a host partition that fused otherwise than the whole model), a
#: residual branch point inside a host partition that a Tessera layer reads too, a weight scale of -inf, a node
#: whose damaged text is not UTF-8 in a model that also fails onnx.checker (the checker's message raised), a
#: DequantizeLinear whose zero point is a graph input (a KeyError), a dead duplicate of a QuantizeLinear (Tessera
#: cut the graph around it, onnxruntime drops it: outputs one step apart), an op type of undecodable bytes, a
#: QLinearAdd scale of 1e30 (MLAS turns values beyond int32 into INT32_MIN), a uint8 output zero point on an int8
#: Add and GlobalAveragePool (onnxruntime runs them on uint8 copies of their int8 inputs: silently wrong before).
REGRESSIONS = (777662, 777860, 888060, 888382, 889496, 1237016, 1240240, 5092, 5738, 6676, 7014, 8199, 11068,
               11243)


@pytest.mark.parametrize("seed", REGRESSIONS)
def test_soak_failures_stay_fixed(seed):
    result = fuzz(seed, 1, "host")
    assert result.cases == 1
    _check(result)


@pytest.mark.rtl
def test_mutated_models_run_or_are_refused_in_one_line_on_the_simulator():
    result = fuzz(SIM_SEEDS.start, len(SIM_SEEDS), "sim")
    _check(result)
    assert result.ran, f"no case ran, so the device path went untried: {result.summary()}"


def test_a_case_is_its_seed():
    """A failure's seed reruns it: the same seed gives the same model, input and mutations."""
    first, again = make_case(123, "mixed"), make_case(123, "mixed")
    assert first.model == again.model and first.mutations == again.mutations and first.target == again.target
    assert first.feeds.keys() == again.feeds.keys()
    assert all(np.array_equal(first.feeds[k], again.feeds[k], equal_nan=True) for k in first.feeds)
    assert make_case(123, "sim").model == first.model


def test_cases_are_made_for_any_seed():
    """Making a case (the mutators) never fails, whatever the seed draws."""
    for seed in range(400):
        assert make_case(seed, "mixed").target in ("host", "sim")


def test_every_seed_model_is_sound():
    """The mutations start from models onnx.checker passes, in both formats and activation types."""
    for key in SEED_MODELS:
        onnx.checker.check_model(seed_model(key))
    assert {key.split("/")[1] for key in SEED_MODELS if "/" in key} == {"qop", "qdq"}


def test_the_runner_sees_a_traceback_a_hang_and_a_refusal(tmp_path, monkeypatch):
    """The classifier itself: an exception out of ``main`` and a run past its time limit are failures; a bad model
    refused in one line is not."""
    case = make_case(5, "host")
    truncated = dataclasses.replace(case, model=case.model[:40], mutations=("truncated",))
    assert run_case(truncated, tmp_path / "refused") == ("refused", None)

    import tessera.sw_driver.cli as cli

    def broken(argv):
        raise KeyError("boom")
    monkeypatch.setattr(cli, "main", broken)
    outcome, failure = run_case(case, tmp_path / "traceback")
    assert outcome == "failed" and failure.kind == "traceback" and "KeyError" in failure.detail

    def stuck(argv):
        import time
        time.sleep(60)
    monkeypatch.setattr(cli, "main", stuck)
    outcome, failure = run_case(case, tmp_path / "hang", timeout=1)
    assert outcome == "failed" and failure.kind == "hang"


def test_a_rewrite_across_a_host_partition_is_not_silent(tmp_path, capsys):
    """Seed 1241284 turns a QDQ GlobalAveragePool into an Identity between two requantisations: onnxruntime's
    optimizer then folds across the host partition's boundary, which the subgraph cannot follow. The outputs
    differ, and the run says so on stderr rather than passing silently."""
    from tessera.sw_driver.cli import main
    from tessera.verif.onnx_fuzz import make_case
    argv = make_case(1241284, "host").write(tmp_path)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "outputs differ from onnxruntime's run of the whole model" in err
