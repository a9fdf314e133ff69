"""PE multiplier designs: the RTL equals the NumPy model on every operand pair, and the model's properties."""

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig, ConfigError, ConfigTypeError
from tessera.hw.pe_multipliers import MULTIPLIERS, PRODUCT_BOUND
from tessera.sw_driver import golden
from tessera.sw_driver.products import approximate_matmul, product_table, products

OPERANDS = np.arange(-128, 128)
APPROXIMATE = [name for name, design in MULTIPLIERS.items() if not design.exact]


@pytest.fixture(scope="module")
def rtl_tables():
    from tessera.verif.multiplier_bank import rtl_product_tables
    return rtl_product_tables()


class TestRtlEqualsModel:
    @pytest.mark.parametrize("name", list(MULTIPLIERS))
    def test_all_65536_operand_pairs(self, rtl_tables, name):
        rtl, model = rtl_tables[name], product_table(name)
        bad = np.argwhere(rtl != model)
        assert not len(bad), (f"{name}: {len(bad)} of 65536 products differ, first x={bad[0][0] - 128} "
                               f"w={bad[0][1] - 128}: RTL {rtl[tuple(bad[0])]}, model {model[tuple(bad[0])]}")


class TestModel:
    def test_exact_is_the_product(self):
        np.testing.assert_array_equal(product_table("exact"), np.multiply.outer(OPERANDS, OPERANDS))

    @pytest.mark.parametrize("name", list(MULTIPLIERS))
    def test_zero_operand_gives_zero(self, name):
        # zero gating holds a gated PE's operands at zero: the design must then add nothing
        table = product_table(name)
        assert not table[128, :].any() and not table[:, 128].any()

    @pytest.mark.parametrize("name", list(MULTIPLIERS))
    def test_products_within_the_bound_the_array_is_sized_for(self, name):
        assert np.abs(product_table(name)).max() <= MULTIPLIERS[name].magnitude_bound < 2 * PRODUCT_BOUND

    @pytest.mark.parametrize("name", APPROXIMATE)
    def test_approximate_designs_differ_from_exact_but_stay_close(self, name):
        error = product_table(name).astype(np.int64) - product_table("exact")
        assert error.any()
        # worst case within 10 % of the output range 2**16 (EvoApproxLib's normalisation; drum4's is 6.6 %)
        assert np.abs(error).max() < 0.10 * 2 ** 16

    @pytest.mark.parametrize("name", APPROXIMATE)
    def test_symmetric_in_activation_and_weight(self, name):
        table = product_table(name)
        np.testing.assert_array_equal(table, table.T)

    def test_mitchell_never_overestimates_and_errs_at_most_an_ninth(self):
        exact = np.abs(product_table("exact")).astype(float)
        approx = np.abs(product_table("mitchell")).astype(float)
        assert (approx <= exact).all()
        nonzero = exact > 0
        assert (1 - approx[nonzero] / exact[nonzero]).max() <= 1 / 9 + 1e-9

    @pytest.mark.parametrize("name", ["truncated4", "truncated8"])
    def test_truncation_is_biased_low_and_exact_above_its_cut(self, name):
        k = MULTIPLIERS[name].k
        error = product_table(name).astype(np.int64) - product_table("exact")
        assert error.mean() < 0
        # operands whose k/2 low bits are zero form no partial product below bit k: nothing is dropped
        aligned = OPERANDS[OPERANDS % (1 << (k // 2)) == 0] + 128
        assert not error[np.ix_(aligned, aligned)].any()

    def test_products_broadcast(self):
        x = np.array([[3], [-7]])
        np.testing.assert_array_equal(products("drum4", x, np.array([5, -128])),
                                      product_table("drum4")[x + 128, np.array([5, -128]) + 128])


class TestApproximateMatmul:
    @pytest.mark.parametrize("name", list(MULTIPLIERS))
    def test_is_the_sum_of_the_designs_products(self, name):
        rng = np.random.default_rng(3)
        a = rng.integers(-128, 128, (2, 5, 17))
        b = rng.integers(-128, 128, (17, 6))
        expected = (product_table(name)[a[..., :, :, None] + 128, b[None, None] + 128]).sum(axis=-2)
        np.testing.assert_array_equal(approximate_matmul(a, b, name), expected)

    def test_exact_equals_the_integer_matmul(self):
        rng = np.random.default_rng(4)
        a, b = rng.integers(-128, 128, (40, 300)), rng.integers(-128, 128, (300, 9))
        np.testing.assert_array_equal(approximate_matmul(a, b, "exact"), a @ b)

    def test_gemm_hw_uses_the_design(self):
        rng = np.random.default_rng(5)
        x = rng.integers(-128, 128, (6, 20), dtype=np.int8)
        w = rng.integers(-128, 128, (20, 4), dtype=np.int8)
        bias = rng.integers(-500, 500, 4).astype(np.int32)
        scale = np.full(4, 2.0 ** -9, np.float32)
        acc = approximate_matmul(x, w, "drum4") + bias
        np.testing.assert_array_equal(golden.gemm_hw(x, w, bias, scale, 1, "drum4"),
                                      golden.requantize(acc, scale, 1, np.int8, axis=-1))
        assert not np.array_equal(golden.gemm_hw(x, w, bias, scale, 1, "drum4"), golden.gemm_hw(x, w, bias, scale, 1))


class TestConfiguration:
    def test_default_is_exact(self):
        assert AcceleratorConfig().multiplier == "exact"

    def test_unknown_design_is_refused_with_the_names(self):
        with pytest.raises(ConfigError, match=r"multiplier: 'booth' is not a design; accepted: 'exact'.*'drum4'"):
            AcceleratorConfig(multiplier="booth")

    def test_wrong_type_is_a_type_error(self):
        with pytest.raises(ConfigTypeError, match="multiplier: must be a string"):
            AcceleratorConfig(multiplier=4)

    def test_round_trips_through_toml(self, tmp_path):
        cfg = AcceleratorConfig(multiplier="mitchell")
        path = tmp_path / "c.toml"
        path.write_text(cfg.to_toml())
        assert AcceleratorConfig.from_toml(path) == cfg
