"""The round-trip bench (verif/bench_round_trip.py): a small resident model over the simulated board's UART, and its
command line's errors."""

import pytest

from tessera.gen.config import AcceleratorConfig

# Small buffers keep the Verilator build short; the autoencoder at width 0.125 stays whole on chip (no weights streamed
# with the run: 5,568 weight words). The device's own link time-out must outlast the link's retries.
SMALL_BOARD = AcceleratorConfig(rows=4, cols=4, act_depth=1024, weight_depth=8192, acc_depth=256, param_depth=256,
                                vec_depth=0, program_depth=1024, link_timeout=1 << 22)


@pytest.mark.rtl
def test_round_trip_of_a_resident_model_over_the_uart(tmp_path):
    from tessera.fpga.sim_board import BoardSimTransport, sim_link_settings
    from tessera.gen.toolchain import ToolMissing
    from tessera.verif.bench_round_trip import round_trip
    try:
        transport = BoardSimTransport(SMALL_BOARD, sim_link_settings(divisor=8))
    except ToolMissing as missing:
        pytest.skip(str(missing))
    try:
        row = round_trip("ad_autoencoder", transport, tmp_path, width=0.125)     # raises unless bit-exact
    finally:
        transport.close()
    print({key: value for key, value in row.items() if key != "link"})
    assert row["whole"] and row["link"]["retransmitted_frames"] == 0
    # The input's frames cross before the device runs (its RUN follows the input's LOAD on the line) and the results'
    # frames after it starts; the results of the last layer may leave while that layer still computes, so the device's
    # time does not add to both lines' whole.
    assert row["round_trip_ms"] >= row["device_ms"] + row["line_to_device_ms"]
    assert row["round_trip_ms"] >= row["line_ms"] > 0
    assert row["data_bytes_to_device"] + row["data_bytes_from_device"] >= row["io_bytes"]
    # the acknowledgements cross too
    assert row["bytes_to_device"] > row["data_bytes_to_device"]
    assert row["bytes_from_device"] > row["data_bytes_from_device"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--models", "ad_autoencoder,resnet"], "--models: unknown resnet; accepted: a comma-separated list of"),
    (["--width", "1.5"], "--width: 1.5 is out of range; accepted: above 0, up to 1"),
    (["--width", "wide"], "--width: 'wide' is not a number"),
])
def test_bad_arguments_are_named_in_one_line(capsys, argv, message):
    from tessera.verif.bench_round_trip import main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in error and len(error.strip().splitlines()) == 1
