"""``tessera run`` checks its inputs first: every bad input is one line naming it and what fits, and nothing runs.

No test here simulates: ``open_sim_device`` is replaced by one that fails the test if a run gets that far.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tessera.sw_driver.host_exec
import tessera.sw_driver.runtime
from tessera.sw_driver.cli import main
from tessera.sw_driver.compiler import TilingError
from tessera.sw_driver.inputs import InputError, InputSpec, check_output_path, model_inputs, read_inputs
from tessera.verif.onnx_models import (
    QuantFormat,
    QuantType,
    add_model,
    conv_model,
    gemm_model,
    quantize_model,
    random_inputs,
)


@pytest.fixture(autouse=True)
def no_simulation(monkeypatch):
    """Validation must fail before a simulator is built or started."""
    def refuse(*args, **kwargs):
        raise AssertionError("open_sim_device was called: the check did not come first")
    monkeypatch.setattr(tessera.sw_driver.runtime, "open_sim_device", refuse)


def _quantize(folder, float_model, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    model = quantize_model(float_model, folder, rng, quant_format=QuantFormat.QOperator, per_channel=True,
                           activation_type=QuantType.QUInt8)
    path = folder / "q.onnx"
    onnx.save(model, path)
    return path, random_inputs(rng, float_model)


def _symbolic_batch(path, out):
    """The model at ``path`` with its first input and output dimension made symbolic ("N")."""
    model = onnx.load(path)
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    onnx.save(model, out)
    return out


def _quantized_input(path, out):
    """The model at ``path`` without its input QuantizeLinear: it takes the uint8 tensor itself."""
    model = onnx.load(path)
    (quantize,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"]
    model.graph.node.remove(quantize)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    del model.graph.input[:]
    model.graph.input.append(onnx.helper.make_tensor_value_info(quantize.output[0], onnx.TensorProto.UINT8, shape))
    onnx.save(model, out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    gemm, gemm_x = _quantize(root / "gemm", gemm_model(np.random.default_rng(1), m=2, k=8, n=5, trans_b=True), 1)
    conv, conv_x = _quantize(root / "conv", conv_model(np.random.default_rng(2), batch=1, in_channels=3,
                                                       out_channels=4, size=(16, 16), kernel=3, stride=1,
                                                       pads=(1, 1, 1, 1)), 2)
    add, add_x = _quantize(root / "add", add_model((1, 4, 4, 4)), 3)
    return {"gemm": (gemm, gemm_x["x"]), "conv": (conv, conv_x["x"]), "add": (add, add_x),
            "gemm_n": (_symbolic_batch(gemm, root / "gemm_n.onnx"), gemm_x["x"]),
            "gemm_u8": (_quantized_input(gemm, root / "gemm_u8.onnx"), None)}


def _error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


class TestBadInputs:
    @pytest.mark.parametrize("model, array, message", [
        ("conv", np.zeros((1, 3, 8, 8), np.int64),
         "input 'x' expects float32 [1,3,16,16], got int64 [1,3,8,8]"),
        ("conv", np.zeros((1, 3, 16, 16), np.float64),
         "input 'x' expects float32 [1,3,16,16], got float64 [1,3,16,16]"),
        ("conv", np.zeros((3, 16, 16), np.float32),
         "input 'x' expects float32 [1,3,16,16], got float32 [3,16,16]"),
        ("gemm_n", np.zeros((2, 7), np.float32), "input 'x' expects float32 [N,8], got float32 [2,7]"),
        ("gemm_n", np.zeros((0, 8), np.float32),
         "input 'x' is empty (float32 [0,8]); it needs at least one element"),
        ("gemm_u8", np.zeros((2, 8), np.int8), "input 'x_quantized' expects uint8 [2,8], got int8 [2,8]"),
    ], ids=["int64", "float64", "rank", "symbolic-but-wrong", "empty", "int8-for-uint8"])
    def test_tensor_that_does_not_fit_is_named_with_what_fits(self, tmp_path, capsys, models, model, array,
                                                              message):
        x_path = tmp_path / "x.npy"
        np.save(x_path, array)
        assert main(["run", str(models[model][0]), "--input", str(x_path)]) == 1
        assert _error_line(capsys) == f"tessera: InputError: {message}"

    def test_nan_and_inf_are_counted_and_located(self, tmp_path, capsys, models):
        path, x = models["conv"]
        x = x.copy()
        x[0, 1, 2, 3], x[0, 2, 5, 5] = np.nan, -np.inf
        np.save(tmp_path / "x.npy", x)
        assert main(["run", str(path), "--input", str(tmp_path / "x.npy")]) == 1
        assert _error_line(capsys) == ("tessera: InputError: input 'x' holds 1 NaN and 1 infinite values (first at "
                                       "[0,1,2,3]); accepted: finite float32 values")

    @pytest.mark.parametrize("content, message", [
        (b"1.0 2.0 3.0\n", "is not a .npy file"),
        (b"", "is not a .npy file"),
    ], ids=["text", "empty-file"])
    def test_file_that_is_not_numpy(self, tmp_path, capsys, models, content, message):
        (tmp_path / "x.npy").write_bytes(content)
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "x.npy")]) == 1
        assert message in _error_line(capsys)

    def test_truncated_and_pickled_files(self, tmp_path, capsys, models):
        np.save(tmp_path / "x.npy", models["gemm"][1])
        data = (tmp_path / "x.npy").read_bytes()
        (tmp_path / "cut.npy").write_bytes(data[:-8])
        np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "cut.npy")]) == 1
        assert "is a damaged .npy file" in _error_line(capsys)
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "obj.npy")]) == 1
        assert "holds Python objects" in _error_line(capsys)

    def test_missing_files(self, tmp_path, capsys, models):
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "none.npy")]) == 1
        assert _error_line(capsys) == (f"tessera: InputError: input file {tmp_path / 'none.npy'} does not exist; "
                                       f"accepted: a .npy file, or an .npz with one array per input")
        np.save(tmp_path / "x.npy", models["gemm"][1])
        assert main(["run", str(tmp_path / "none.onnx"), "--input", str(tmp_path / "x.npy")]) == 1
        assert "model file" in _error_line(capsys)

    @pytest.mark.parametrize("option", ["--output", "--report"])
    def test_output_folders_must_exist_before_the_run(self, tmp_path, capsys, models, option):
        np.save(tmp_path / "x.npy", models["gemm"][1])
        target = tmp_path / "no" / "such" / "y"
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "x.npy"), option, str(target)]) == 1
        assert _error_line(capsys) == (f"tessera: InputError: {option} {target}: the folder {target.parent} does not "
                                       f"exist; create it first")


class TestNpz:
    def test_several_inputs_run_from_an_npz_and_check_against_onnxruntime(self, tmp_path, capsys, models):
        path, feeds = models["add"]
        np.savez(tmp_path / "x.npz", **feeds)
        report = tmp_path / "r.json"
        assert main(["run", str(path), "--input", str(tmp_path / "x.npz"), "--target", "host", "--check",
                     "--output", str(tmp_path / "y.npy"), "--report", str(report)]) == 0
        assert "check: golden model: 0 of 64 outputs differ; onnxruntime: 0 of 64 outputs differ" in \
            capsys.readouterr().out
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), session.run(None, feeds)[0])
        check = json.loads(report.read_text())["check"]
        assert check["golden_mismatches"] == check["onnxruntime_mismatches"] == 0 and check["outputs"] == 64

    def test_one_input_from_an_npz(self, tmp_path, models):
        path, x = models["gemm"]
        np.savez(tmp_path / "x.npz", x=x)
        assert main(["run", str(path), "--input", str(tmp_path / "x.npz"), "--target", "host"]) == 0

    @pytest.mark.parametrize("arrays, message", [
        ({"a": 0}, "lacks 'b'; accepted: one array per graph input, named 'a', 'b'"),
        ({"a": 0, "b": 0, "c": 0}, "has 'c', which the model does not take; accepted"),
        ({"x": 0}, "lacks 'a', 'b' and has 'x', which the model does not take"),
    ], ids=["missing", "extra", "both"])
    def test_names_must_be_the_graph_inputs(self, tmp_path, capsys, models, arrays, message):
        np.savez(tmp_path / "x.npz", **{name: np.zeros((1, 4, 4, 4), np.float32) for name in arrays})
        assert main(["run", str(models["add"][0]), "--input", str(tmp_path / "x.npz")]) == 1
        assert message in _error_line(capsys)

    def test_several_inputs_need_an_npz(self, tmp_path, capsys, models):
        np.save(tmp_path / "x.npy", np.zeros((1, 4, 4, 4), np.float32))
        assert main(["run", str(models["add"][0]), "--input", str(tmp_path / "x.npy")]) == 1
        assert "the model has 2 inputs ('a', 'b'); give them as an .npz" in _error_line(capsys)

    def test_each_array_is_checked_by_name(self, tmp_path, capsys, models):
        np.savez(tmp_path / "x.npz", a=np.zeros((1, 4, 4, 4), np.float32), b=np.zeros((1, 4, 4, 4), np.int64))
        assert main(["run", str(models["add"][0]), "--input", str(tmp_path / "x.npz")]) == 1
        assert _error_line(capsys) == "tessera: InputError: input 'b' expects float32 [1,4,4,4], got int64 [1,4,4,4]"


class TestReadInputs:
    """The checks themselves, on graph inputs as the ONNX model declares them."""

    def test_symbolic_dimensions_come_from_the_onnx_graph_input(self, models):
        (spec,) = model_inputs(models["gemm_n"][0])
        assert spec == InputSpec("x", np.dtype(np.float32), ("N", 8))
        assert spec.describe() == "float32 [N,8]"

    def test_any_size_fits_a_symbolic_dimension(self, tmp_path):
        spec = InputSpec("x", np.dtype(np.float32), ("N", None, 4))
        for shape in ((1, 1, 4), (7, 3, 4)):
            np.save(tmp_path / "x.npy", np.ones(shape, np.float32))
            assert read_inputs(tmp_path / "x.npy", [spec])["x"].shape == shape

    def test_inputs_sharing_a_dimension_name_must_agree(self, tmp_path):
        specs = [InputSpec("a", np.dtype(np.float32), ("N", 4)), InputSpec("b", np.dtype(np.float32), ("N", 4))]
        np.savez(tmp_path / "x.npz", a=np.ones((2, 4), np.float32), b=np.ones((3, 4), np.float32))
        with pytest.raises(InputError, match="input 'b' has N = 3 but input 'a' has N = 2"):
            read_inputs(tmp_path / "x.npz", specs)

    def test_quantized_input_takes_its_own_type(self, tmp_path, models):
        (spec,) = model_inputs(models["gemm_u8"][0])
        np.save(tmp_path / "x.npy", np.full((2, 8), 200, np.uint8))
        assert read_inputs(tmp_path / "x.npy", [spec])[spec.name].dtype == np.uint8

    def test_other_byte_order_is_the_same_values(self, tmp_path):
        spec = InputSpec("x", np.dtype(np.float32), (2,))
        np.save(tmp_path / "x.npy", np.array([1.5, -2.0], ">f4"))
        x = read_inputs(tmp_path / "x.npy", [spec])["x"]
        assert x.dtype == np.float32 and x.tolist() == [1.5, -2.0]

    def test_a_folder_is_not_an_input_or_an_output(self, tmp_path):
        with pytest.raises(InputError, match="is a folder"):
            read_inputs(tmp_path, [InputSpec("x", np.dtype(np.float32), (1,))])
        with pytest.raises(InputError, match="--output .* is a folder"):
            check_output_path(tmp_path, "--output")


class TestPlacement:
    @pytest.fixture
    def tiny_config(self, tmp_path):
        path = tmp_path / "tiny.toml"
        path.write_text("rows = 4\ncols = 4\nact_depth = 4\nweight_depth = 4\nacc_depth = 8\n")
        return path

    @pytest.mark.parametrize("model, layer", [("gemm", "'QGemm_1' (Gemm)"), ("conv", "(Conv)")])
    def test_strict_refuses_a_compute_layer_on_the_host_before_simulating(self, tmp_path, capsys, models,
                                                                          tiny_config, model, layer):
        path, x = models[model]
        np.save(tmp_path / "x.npy", x)
        assert main(["run", str(path), "--input", str(tmp_path / "x.npy"), "--config", str(tiny_config),
                     "--strict"]) == 1
        line = _error_line(capsys)
        assert line.startswith("tessera: PlacementError: --strict: 1 compute layer would run on the host: ")
        assert layer in line and "does not tile onto this configuration" in line

    def test_strict_needs_a_device_target(self, tmp_path, capsys, models):
        np.save(tmp_path / "x.npy", models["gemm"][1])
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "x.npy"), "--target", "host",
                     "--strict"]) == 1
        assert "--strict asks that every compute layer run on the device" in _error_line(capsys)

    def test_a_run_with_no_compute_layer_on_the_device_says_so(self, tmp_path, capsys, models, monkeypatch):
        """Without --strict the run goes on, but stderr says the device did none of the work, and the table why."""
        _device_where_nothing_tiles(monkeypatch, "one weight tile needs 8 words; weight_depth is 4")
        np.save(tmp_path / "x.npy", models["gemm"][1])
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "x.npy"), *_4x4, "--per-layer"]) == 0
        out, err = capsys.readouterr()
        assert err == ("tessera: warning: the model's one compute layer, 'QGemm_1' (Gemm), ran on the host; the "
                       "table says why\n")
        (row,) = [line for line in out.splitlines() if line.startswith("QGemm_1")]
        (note,) = [line for line in out.splitlines() if "weight_depth is 4" in line]
        number = row.split("host ")[1].split()[0]
        assert note == (f"{number} does not tile onto this configuration: one weight tile needs 8 words; "
                        f"weight_depth is 4")

    def test_long_reasons_are_cut_to_a_line_unless_verbose(self, tmp_path, capsys, models, monkeypatch):
        why = "a reason that goes on " + "and on " * 30 + "to the end"
        _device_where_nothing_tiles(monkeypatch, why)
        np.save(tmp_path / "x.npy", models["gemm"][1])
        # (layer by layer: the fake device runs no resident segments)
        argv = ["run", str(models["gemm"][0]), "--input", str(tmp_path / "x.npy"), *_4x4, "--per-layer"]
        assert main(argv) == 0
        (note,) = [line for line in capsys.readouterr().out.splitlines() if "a reason that goes on" in line]
        assert len(note) <= 110 and note.endswith("... (-v)")
        assert main([*argv, "-v"]) == 0
        (note,) = [line for line in capsys.readouterr().out.splitlines() if "a reason that goes on" in line]
        assert note.endswith(f"does not tile onto this configuration: {why}")


def _device_where_nothing_tiles(monkeypatch, why):
    """``open_sim_device`` replaced by a device on which every layer fails to tile, with ``why``."""
    class NothingTiles:
        def __init__(self, cfg):
            self.cfg = cfg

        def gemm(self, *args, **kwargs):
            raise TilingError(why)

        def close(self):
            pass
    monkeypatch.setattr(tessera.sw_driver.runtime, "open_sim_device", lambda cfg, **kwargs: NothingTiles(cfg))


_4x4 = ["--rows", "4", "--cols", "4"]


class TestTableAndCheck:
    def test_every_host_layer_points_to_its_reason_written_once(self, tmp_path, capsys, models):
        np.save(tmp_path / "x.npy", models["gemm"][1])
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "x.npy"), "--target", "host"]) == 0
        out = capsys.readouterr().out
        assert out.count("host [1]") == 3 and out.count("[1] host run") == 1

    def test_golden_model_mismatch_fails_the_check(self, tmp_path, capsys, models, monkeypatch):
        real = tessera.sw_driver.host_exec.run_graph

        def off_by_one(graph, inputs):
            return {name: y + np.float32(1) for name, y in real(graph, inputs).items()}
        monkeypatch.setattr(tessera.sw_driver.host_exec, "run_graph", off_by_one)
        np.save(tmp_path / "x.npy", models["gemm"][1])
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "x.npy"), "--target", "host",
                     "--check"]) == 1
        assert "check: golden model: 10 of 10 outputs differ; onnxruntime: 0 of 10 outputs differ" in \
            capsys.readouterr().out

    def test_onnxruntime_mismatch_fails_the_check(self, tmp_path, capsys, models, monkeypatch):
        class Skewed(ort.InferenceSession):
            def run(self, names, feeds):
                outputs = super().run(names, feeds)
                outputs[0][0, 0] += 1
                return outputs
        monkeypatch.setattr(ort, "InferenceSession", Skewed)
        np.save(tmp_path / "x.npy", models["gemm"][1])
        report = tmp_path / "r.json"
        assert main(["run", str(models["gemm"][0]), "--input", str(tmp_path / "x.npy"), "--target", "host",
                     "--check", "--report", str(report)]) == 1
        assert "check: golden model: 0 of 10 outputs differ; onnxruntime: 1 of 10 outputs differ" in \
            capsys.readouterr().out
        assert json.loads(report.read_text())["check"]["onnxruntime_mismatches"] == 1
