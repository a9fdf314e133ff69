"""Simulation models of the vendor primitives the RTL instantiates, so Verilator can run a top as an FPGA build
elaborates it (`tessera.fpga.sim_board.build_board_harness` with ``family="ecp5"``).

Each model covers only the settings the RTL uses (`tessera.hw.multiplier`, `tessera.fpga.top`) and stops the
simulation on any other, so a model can never quietly disagree with the silicon on a mode nobody checked.
"""

__all__ = ["simulation_models"]


def _bus(name, width):
    return [f"{name}{i}" for i in range(width)]


def _mult18x18d():
    """Lattice ECP5 MULT18X18D with input registers A and B and the output register, all on CLK0 / CE0 / RST0
    (FPGA-TN-02205, sysDSP usage guide): ``P = A * B``, each operand signed when its SIGNED input is high."""
    # The mode is written out here rather than taken from hw.multiplier, so that the $fatal below catches an
    # instance whose mode changed without its model.
    modelled = {f"{register}_{control}": value for register in ("REG_INPUTA", "REG_INPUTB", "REG_OUTPUT")
                for control, value in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))}
    modelled.update(REG_INPUTC_CLK="NONE", REG_PIPELINE_CLK="NONE", SOURCEB_MODE="B_SHIFT", MULT_BYPASS="DISABLED",
                    RESETMODE="SYNC", CAS_MATCH_REG="FALSE", HIGHSPEED_CLK="NONE", GSR="DISABLED")
    # clock dividers: accepted whatever their setting (the model has one clock)
    parameters = {**modelled, **{f"CLK{i}_DIV": "ENABLED" for i in range(4)}}
    inputs = [*_bus("A", 18), *_bus("B", 18), *_bus("C", 18), "SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB",
              *_bus("CLK", 4), *_bus("CE", 4), *_bus("RST", 4)]
    outputs = _bus("P", 36)
    condition = " || ".join(f'{name} != "{value}"' for name, value in modelled.items())
    return "\n".join([
        "/* verilator lint_off UNUSEDSIGNAL */",
        "/* verilator lint_off UNUSEDPARAM */",
        "module MULT18X18D #(",
        ",\n".join(f'    parameter {name} = "{value}"' for name, value in parameters.items()),
        ") (",
        ",\n".join([*(f"    input {name}" for name in inputs), *(f"    output {name}" for name in outputs)]),
        ");",
        "    wire [17:0] a = {" + ", ".join(reversed(_bus("A", 18))) + "};",
        "    wire [17:0] b = {" + ", ".join(reversed(_bus("B", 18))) + "};",
        "    reg [17:0] a_reg, b_reg;",
        "    reg signed_a, signed_b;",
        "    reg [35:0] p_reg;",
        "    // 19-bit two's complement operands: an unsigned one gets a zero sign bit",
        "    wire signed [18:0] a_ext = {signed_a & a_reg[17], a_reg};",
        "    wire signed [18:0] b_ext = {signed_b & b_reg[17], b_reg};",
        "    wire signed [37:0] product = a_ext * b_ext;",
        "    initial if (" + condition + ")",
        '        $fatal(1, "MULT18X18D model: only input and output registers on CLK0/CE0/RST0 are modelled");',
        "    always @(posedge CLK0)",
        "        if (RST0) begin",
        "            a_reg <= 0; b_reg <= 0; signed_a <= 0; signed_b <= 0; p_reg <= 0;",
        "        end else if (CE0) begin",
        "            a_reg <= a; b_reg <= b; signed_a <= SIGNEDA; signed_b <= SIGNEDB; p_reg <= product[35:0];",
        "        end",
        "    assign {" + ", ".join(reversed(outputs)) + "} = p_reg;",
        "endmodule",
        "/* verilator lint_on UNUSEDSIGNAL */",
        "/* verilator lint_on UNUSEDPARAM */",
        "",
    ])


def _dcca():
    """Lattice ECP5 DCCA, the buffer onto a global clock network (`tessera.fpga.top` drives the session reset through
    one): ``CLKO = CLKI`` while ``CE`` is high."""
    return "\n".join([
        "module DCCA (input CLKI, input CE, output CLKO);",
        "    assign CLKO = CLKI & CE;",
        "endmodule",
        "",
    ])


_MODELS = {"ecp5": (_mult18x18d, _dcca)}


def simulation_models(family):
    """Verilog models of the primitives a top elaborated for ``family`` instantiates ("" when it needs none)."""
    return "".join(model() for model in _MODELS.get(str(family or "").lower(), ()))
