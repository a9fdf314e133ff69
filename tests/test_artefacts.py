"""The generated ISA document, C header and FuseSoC core agree with the one ISA definition (hw.isa, hw.layouts)
and with the host encoder that the driver uses."""

import json
import random
import re
import shutil
import subprocess
import tomllib

import pytest
from amaranth.hdl import Shape

from tessera.gen import artefacts
from tessera.gen.artefacts import ARTEFACTS, ArtefactError, render_artefacts, write_artefacts
from tessera.gen.config import DATAFLOWS, AcceleratorConfig
from tessera.gen.lint import LINT_WAIVERS
from tessera.gen.packing import pack
from tessera.gen.verilog import DEVICE_TOPLEVEL, build_dir
from tessera.hw.isa import (
    COUNTERS,
    BufferId,
    ErrorCode,
    Opcode,
    PacketKind,
    instruction_layout,
    operands_layout,
    packet_header_layout,
    words_per_buffer_word,
)
from tessera.sw_driver.cli import main
from tessera.sw_driver.isa_encode import instruction

CONFIGS = [
    AcceleratorConfig(rows=4, cols=8, dataflow="ws", act_depth=64, weight_depth=64, acc_depth=32, param_depth=8),
    AcceleratorConfig(rows=3, cols=5, dataflow="os", act_depth=32, weight_depth=32, acc_depth=16, param_depth=4,
                      counters=False),
]
COMPILERS = {"c99": ["gcc", "-std=c99", "-x", "c"], "c++17": ["g++", "-std=c++17", "-x", "c++"]}


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c.dataflow}{c.rows}x{c.cols}")
def generated(request, tmp_path_factory):
    """The artefacts of one configuration, written as `tessera verilog` writes them: (cfg, folder, texts)."""
    cfg = request.param
    verilog = build_dir(cfg, tmp_path_factory.mktemp("artefacts")) / f"{DEVICE_TOPLEVEL}.v"
    paths = write_artefacts(cfg, verilog)
    return cfg, verilog.parent, {path.name: path.read_text() for path in paths}


def section(markdown, heading):
    """The body of a Markdown section, up to the next heading of the same or a higher level (the document has
    one level-1 heading, its title; a ``#`` inside a code block is not a heading)."""
    level = heading.split(" ")[0]
    start = markdown.index(f"\n{heading}\n")
    following = [markdown.find(f"\n{h} ", start + 1) for h in ("##", "###")[:len(level) - 1]]
    ends = [i for i in following if i != -1]
    return markdown[start:min(ends) if ends else len(markdown)]


def field_bits(cfg, layout, base):
    """(name, msb, lsb, width) of each field of ``layout`` placed at bit ``base``, read from the layout."""
    for name, field in layout:
        shape = Shape.cast(field.shape)
        yield name, base + field.offset + shape.width - 1, base + field.offset, shape.width


class TestArtefacts:
    def test_every_artefact_records_the_configuration_hash(self, generated):
        cfg, folder, texts = generated
        assert set(texts) == set(ARTEFACTS)
        for name, text in texts.items():
            assert f"config_hash: {cfg.hash}" in text, name

    def test_writing_twice_leaves_the_same_files(self, generated):
        cfg, folder, texts = generated
        write_artefacts(cfg, folder / f"{DEVICE_TOPLEVEL}.v")
        assert {name: (folder / name).read_text() for name in ARTEFACTS} == texts
        assert not list(folder.glob("*.tmp"))


class TestIsaDocument:
    def test_lists_every_opcode_with_its_value(self, generated):
        cfg, folder, texts = generated
        opcodes = section(texts["isa.md"], "## Opcodes")
        for opcode in Opcode:
            assert f"| 0x{opcode:02X} | `{opcode.name}` |" in opcodes
            assert f"\n### {opcode.name} (0x{opcode:02X})\n" in texts["isa.md"]

    def test_places_every_operand_field_where_the_layout_does(self, generated):
        cfg, folder, texts = generated
        base = instruction_layout(cfg)["operands"].offset
        for opcode in Opcode:
            body = section(texts["isa.md"], f"### {opcode.name} (0x{opcode:02X})")
            for name, msb, lsb, width in field_bits(cfg, operands_layout(cfg, opcode), base):
                assert f"| `{name}` | {msb}:{lsb} | {width} |" in body, (opcode.name, name)

    def test_lists_every_error_code(self, generated):
        cfg, folder, texts = generated
        errors = section(texts["isa.md"], "## Error codes")
        for code in ErrorCode:
            assert f"| {code.value} | `{code.name}` |" in errors

    def test_lists_the_packet_header_and_every_packet_kind(self, generated):
        cfg, folder, texts = generated
        packets = section(texts["isa.md"], "## Device packets")
        for name, msb, lsb, width in field_bits(cfg, packet_header_layout(), 0):
            assert f"| `{name}` | {msb}:{lsb} | {width} |" in packets
        for kind in PacketKind:
            assert f"| {kind.value} | `{kind.name}` |" in packets

    def test_lists_every_counter_at_its_packet_index(self, generated):
        cfg, folder, texts = generated
        counters = section(texts["isa.md"], "## Performance counters")
        for index, (name, description) in enumerate(COUNTERS):
            assert f"| {index} | `{name}` | {description} |" in counters

    def test_gives_the_load_data_format_of_every_buffer(self, generated):
        cfg, folder, texts = generated
        load = section(texts["isa.md"], "## LOAD data")
        for buffer in BufferId:
            depth = getattr(cfg, f"{buffer.name.lower()}_depth")
            assert f"| {buffer.value} | `{buffer.name}` | {depth} | {words_per_buffer_word(cfg, buffer)} |" in load

    def test_records_the_configuration_it_was_generated_for(self, generated):
        cfg, folder, texts = generated
        body = section(texts["isa.md"], "## Configuration")
        as_json = re.search(r"```json\n(.*?)```", body, re.S).group(1)
        as_toml = re.search(r"```toml\n(.*?)```", body, re.S).group(1)
        assert AcceleratorConfig.from_dict(json.loads(as_json)) == cfg
        assert AcceleratorConfig.from_dict(tomllib.loads(as_toml)["accelerator"]) == cfg
        assert f"`{cfg.hash}`" in texts["isa.md"].splitlines()[2]


class TestDescriptions:
    @pytest.mark.parametrize("table, key, shown", [
        ("OPCODE_DESCRIPTIONS", Opcode.WAIT, "WAIT"),
        ("FIELD_DESCRIPTIONS", (Opcode.GEMM, "y_zp"), "GEMM.y_zp"),
        ("ERROR_DESCRIPTIONS", ErrorCode.TRUNCATED, "TRUNCATED"),
        ("PACKET_DESCRIPTIONS", PacketKind.ERROR, "ERROR"),
        ("BUFFER_DESCRIPTIONS", BufferId.PARAM, "PARAM"),
        ("HEADER_FIELD_DESCRIPTIONS", "length", "length"),
    ])
    def test_a_missing_description_stops_generation(self, monkeypatch, table, key, shown):
        monkeypatch.delitem(getattr(artefacts, table), key)
        with pytest.raises(ArtefactError, match=rf"^{re.escape(shown)} has no description; add it to {table}"):
            render_artefacts(CONFIGS[0])

    def test_a_description_of_something_removed_stops_generation(self, monkeypatch):
        monkeypatch.setitem(artefacts.FIELD_DESCRIPTIONS, (Opcode.NOP, "ghost"), "not a field")
        with pytest.raises(ArtefactError, match="describes NOP.ghost, which the ISA definition no longer has"):
            render_artefacts(CONFIGS[0])

    def test_every_opcode_and_operand_field_is_described(self):
        assert set(artefacts.OPCODE_DESCRIPTIONS) == set(Opcode)
        for cfg in CONFIGS:
            fields = {(op, name) for op in Opcode for name, _ in operands_layout(cfg, op)}
            assert set(artefacts.FIELD_DESCRIPTIONS) == fields


def _encoder_program(cfg):
    """A C/C++ program that encodes instructions read from stdin with the header's encoders (one line
    ``OPCODE v0 v1 ...`` per instruction, values in the order of the operand layout) and, given an argument,
    prints the header's constants instead."""
    header = pack(packet_header_layout(), {"kind": int(PacketKind.ERROR), "length": 0x123456})
    constants = [
        'printf("rows %d\\n", TESSERA_CONFIG_ROWS);',
        'printf("cols %d\\n", TESSERA_CONFIG_COLS);',
        'printf("dataflow %s\\n", TESSERA_CONFIG_DATAFLOW);',
        'printf("dataflow_id %d\\n", (int)TESSERA_CONFIG_DATAFLOW_ID);',
        'printf("counters %d\\n", TESSERA_CONFIG_COUNTERS);',
        'printf("hash %s\\n", TESSERA_CONFIG_HASH);',
        'printf("instruction_words %d\\n", TESSERA_INSTRUCTION_WORDS);',
        'printf("counter_count %d\\n", TESSERA_COUNTER_COUNT);',
        (f'printf("packet %lu %lu\\n", (unsigned long)tessera_packet_kind({header}u), '
         f'(unsigned long)tessera_packet_length({header}u));'),
        *(f'printf("counter_{name} %d %s\\n", TESSERA_COUNTER_{name.upper()}, '
          f'counter_names[TESSERA_COUNTER_{name.upper()}]);' for name, _ in COUNTERS),
        *(f'printf("link_words_{b.name} %d\\n", TESSERA_{b.name}_LINK_WORDS);' for b in BufferId),
    ]
    branches = []
    for opcode in Opcode:
        fields = list(operands_layout(cfg, opcode))
        casts = [f"({'int32_t' if Shape.cast(field.shape).signed else 'uint32_t'})v[{i}]"
                 for i, (_, field) in enumerate(fields)]
        read = f"for (i = 0; i < {len(fields)}; i++) if (scanf(\"%lld\", &v[i]) != 1) return 2; " if fields else ""
        branches.append(f'if (strcmp(name, "{opcode.name}") == 0) {{ {read}'
                        f'rc = tessera_encode_{opcode.name.lower()}({", ".join(["w", *casts])}); }} else')
    newline = "\n        "
    return f"""#include <stdio.h>
#include <string.h>
#include "tessera.h"

static const char *const counter_names[] = TESSERA_COUNTER_NAMES;

int main(int argc, char **argv)
{{
    char name[64];
    long long v[32];
    uint32_t w[TESSERA_INSTRUCTION_WORDS];
    int i, rc;
    (void)argv;
    if (argc > 1) {{
        {newline.join(constants)}
        return 0;
    }}
    while (scanf("%63s", name) == 1) {{
        {newline.join(branches)}
            return 3;
        printf("%d", rc);
        for (i = 0; i < TESSERA_INSTRUCTION_WORDS; i++)
            printf(" %lu", (unsigned long)w[i]);
        printf("\\n");
    }}
    return 0;
}}
"""


@pytest.fixture(scope="module", params=list(COMPILERS))
def encoder(request, generated):
    """The encoder program compiled against the generated header: (cfg, run(stdin, *args) -> stdout)."""
    cfg, folder, texts = generated
    command = COMPILERS[request.param]
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed; it is needed to compile the generated C header as "
                    f"{request.param}")
    source = folder / f"encode_{request.param}.src"
    binary = folder / f"encode_{request.param.replace('+', 'p')}"
    source.write_text(_encoder_program(cfg))
    build = subprocess.run([*command, "-Wall", "-Wextra", "-pedantic", "-Werror", "-I", str(folder), str(source),
                            "-o", str(binary)], capture_output=True, text=True)
    assert build.returncode == 0, f"the generated header does not compile as {request.param}:\n{build.stderr}"

    def run(stdin="", *args):
        done = subprocess.run([str(binary), *args], input=stdin, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout
    return cfg, run


def _ranges(cfg, opcode):
    for name, field in operands_layout(cfg, opcode):
        shape = Shape.cast(field.shape)
        if shape.signed:
            yield name, shape.width, -(1 << shape.width - 1), (1 << shape.width - 1) - 1
        else:
            yield name, shape.width, 0, (1 << shape.width) - 1


class TestCHeader:
    def test_encoders_agree_with_the_python_encoder(self, encoder):
        cfg, run = encoder
        rng = random.Random(f"{cfg.hash}-encoders")
        cases = []
        for opcode in Opcode:
            ranges = list(_ranges(cfg, opcode))
            cases.append((opcode, {name: low for name, _, low, _ in ranges}))
            cases.append((opcode, {name: high for name, _, _, high in ranges}))
            cases += [(opcode, {name: rng.randint(low, high) for name, _, low, high in ranges}) for _ in range(25)]
        assert {op for op, _ in cases} >= {Opcode.GEMM, Opcode.LOAD}
        stdin = "".join(f"{op.name} {' '.join(str(v) for v in fields.values())}\n" for op, fields in cases)
        for (opcode, fields), line in zip(cases, run(stdin).splitlines(), strict=True):
            rc, *words = (int(v) for v in line.split())
            assert rc == 0, (opcode.name, fields)
            assert words == [int(w) for w in instruction(cfg, opcode, **fields)], (opcode.name, fields)

    def test_encoders_refuse_fields_that_do_not_fit(self, encoder):
        cfg, run = encoder
        cases = []
        for opcode in Opcode:
            ranges = list(_ranges(cfg, opcode))
            for name, width, low, high in ranges:
                if width >= 32:
                    continue  # the C argument type itself bounds a 32-bit field
                for bad in (low - 1, high + 1) if low < 0 else (high + 1,):
                    fields = {n: 0 for n, *_ in ranges} | {name: bad}
                    with pytest.raises(ValueError):
                        instruction(cfg, opcode, **fields)
                    cases.append(f"{opcode.name} {' '.join(str(v) for v in fields.values())}\n")
        assert cases
        assert [line.split()[0] for line in run("".join(cases)).splitlines()] == ["-1"] * len(cases)

    def test_constants_match_the_configuration_and_the_isa(self, encoder):
        cfg, run = encoder
        values = dict(line.split(" ", 1) for line in run("", "constants").splitlines())
        assert values["rows"] == str(cfg.rows) and values["cols"] == str(cfg.cols)
        assert values["dataflow"] == cfg.dataflow
        assert values["dataflow_id"] == str(list(DATAFLOWS).index(cfg.dataflow))
        assert values["counters"] == str(int(cfg.counters))
        assert values["hash"] == cfg.hash
        assert values["instruction_words"] == str(len(instruction(cfg, Opcode.NOP)))
        assert values["packet"] == f"{int(PacketKind.ERROR)} {0x123456}"
        assert values["counter_count"] == str(len(COUNTERS))
        for index, (name, _) in enumerate(COUNTERS):
            assert values[f"counter_{name}"] == f"{index} {name}"
        for buffer in BufferId:
            assert values[f"link_words_{buffer.name}"] == str(words_per_buffer_word(cfg, buffer))


class TestCoreFile:
    def test_is_a_capi2_core_of_the_device_verilog(self, generated):
        cfg, folder, texts = generated
        lines = texts["tessera.core"].splitlines()
        assert lines[0] == "CAPI=2:"
        names = [line.removeprefix("name: ") for line in lines if line.startswith("name: ")]
        assert len(names) == 1
        vlnv = names[0].split(":")
        assert len(vlnv) == 4 and all(re.fullmatch(r"[A-Za-z0-9_.\-]+", part) for part in vlnv), names[0]
        assert vlnv[:2] == ["tessera", "accel"] and cfg.hash in vlnv[2]
        for key in ("filesets:", "  rtl:", "    file_type: verilogSource", "targets:", "  default:", "  lint:",
                    "    default_tool: verilator", "        mode: lint-only"):
            assert key in lines, key
        assert f'      - "{DEVICE_TOPLEVEL}.v"' in lines
        assert lines.count(f"    toplevel: {DEVICE_TOPLEVEL}") == 2
        for waiver in LINT_WAIVERS:
            assert f"          - -Wno-{waiver}" in lines

    def test_parses_as_yaml(self, generated):
        yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; the structural check above covers "
                                                  "the core file")
        cfg, folder, texts = generated
        core = yaml.safe_load(texts["tessera.core"])
        assert "CAPI=2" in core
        assert core["filesets"]["rtl"]["files"] == [f"{DEVICE_TOPLEVEL}.v"]
        assert core["targets"]["default"]["toplevel"] == DEVICE_TOPLEVEL
        assert core["targets"]["lint"]["tools"]["verilator"]["mode"] == "lint-only"


class TestCommandLine:
    def test_verilog_writes_every_artefact_beside_the_device_verilog(self, tmp_path, capsys):
        cfg = CONFIGS[1]
        config = tmp_path / "c.toml"
        config.write_text(cfg.replace(rows=2).to_toml())
        assert main(["verilog", "--config", str(config), "--rows", "3", "--out", str(tmp_path)]) == 0
        printed = capsys.readouterr().out.splitlines()
        folder = build_dir(cfg, tmp_path)
        verilog = folder / f"{DEVICE_TOPLEVEL}.v"
        assert f"module {DEVICE_TOPLEVEL}(" in verilog.read_text()
        assert printed[0].startswith(f"{verilog}  ")
        expected = render_artefacts(cfg)
        for name in ARTEFACTS:
            assert (folder / name).read_text() == expected[name], name
            assert str(folder / name) in printed
        assert f'- "{verilog.name}"' in (folder / "tessera.core").read_text()


def test_cached_verilog_is_generated_once_per_rtl_source(tmp_path, monkeypatch):
    """A run that reuses a simulator does not elaborate the design again; a change to the RTL sources (the
    stamp beside the Verilog) does."""
    from tessera.gen import verilog
    cfg = AcceleratorConfig(rows=2, cols=2, act_depth=16, weight_depth=16, acc_depth=16, param_depth=4)
    path = verilog.cached_verilog(cfg, tmp_path, top=DEVICE_TOPLEVEL)
    text = path.read_text()
    assert "module tessera_accel" in text

    def no_elaboration(*args, **kwargs):
        raise AssertionError("elaborated again")

    monkeypatch.setattr(verilog, "generate_verilog", no_elaboration)
    assert verilog.cached_verilog(cfg, tmp_path, top=DEVICE_TOPLEVEL).read_text() == text
    path.with_suffix(".source").write_text("sources of another RTL")
    with pytest.raises(AssertionError, match="elaborated again"):
        verilog.cached_verilog(cfg, tmp_path, top=DEVICE_TOPLEVEL)
