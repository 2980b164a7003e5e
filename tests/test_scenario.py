"""Scenario files: schema validation (before anything runs) and, once the model is present,
execution with expectations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtdsim.cli.main import main
from vtdsim.errors import ScenarioError
from vtdsim.scenario.schema import load_scenario, parse_bdf, parse_scenario, parse_size

BASE = """
title = "t"
[platform]
memory = "64M"
[[platform.units]]
name = "dmar0"
pasid_bits = 20
[[platform.devices]]
name = "parent"
bdf = "00:02.0"
pasid_bits = 20
[[steps]]
op = "domain_alloc"
as = "d1"
[[steps]]
op = "dev_enable_feature"
device = "parent"
[[steps]]
op = "aux_attach_device"
domain = "d1"
device = "parent"
[[steps]]
op = "aux_get_pasid"
domain = "d1"
device = "parent"
as = "p1"
expect = { ret = 1 }
[[steps]]
op = "map"
domain = "d1"
iova = 0x1000
paddr = 0x100000
size = "4K"
[[steps]]
op = "dma_read"
device = "parent"
pasid = "$p1"
addr = 0x1000
length = 8
expect = { data = "00 00 00 00 00 00 00 00" }
"""


def test_valid_scenario_parses_with_values_normalised() -> None:
    sc = parse_scenario(BASE, "s.toml")
    assert sc.memory_size == 64 << 20
    assert sc.platform.devices[0].unit == "dmar0"
    assert len(sc.steps) == 6
    m = sc.steps[4]
    assert m.op == "map" and m.size == 4096
    assert sc.unit_caps == {"dmar0": {"pasid_bits": 20}}


@pytest.mark.parametrize(
    ("old", "new", "where", "what"),
    [
        (
            "iova = 0x1000",
            "iova = -1",
            "step 5 (op 'map')",
            "field iova = -1: expected an unsigned",
        ),
        ('pasid = "$p1"', 'pasid = "$p2"', "step 6 (op 'dma_read')", "'$p2': undefined value"),
        (
            'domain = "d1"\ndevice',
            'domain = "d9"\ndevice',
            "step 3",
            "field domain = 'd9': undefined",
        ),
        ('op = "map"', 'op = "mapp"', "step 5", "field op: expected one of"),
        ("length = 8", "length = 8\nfoo = 1", "step 6 (op 'dma_read')", "unknown key 'foo'"),
        ('size = "4K"', 'size = "4Q"', "step 5", "field size: '4Q' is not a byte count"),
        ('bdf = "00:02.0"', 'bdf = "00:42.0"', "platform.devices[0]", "field bdf"),
        (
            "pasid_bits = 20\n[[platform.devices]]",
            "pasid_bits = 21\n[[platform.devices]]",
            "platform.units[0]",
            "pasid_bits",
        ),
        ("expect = { ret = 1 }", 'expect = { ret = "x" }', "step 4", "field expect.ret"),
        ('memory = "64M"', "memory = 5", "platform", "field memory = 0x5"),
        (
            'expect = { data = "00 00 00 00 00 00 00 00" }',
            'expect = { errno = "EFOO" }',
            "step 6",
            "field expect.errno",
        ),
        (
            'device = "parent"\n[[steps]]\nop = "aux_attach',
            'device = 3\n[[steps]]\nop = "aux_attach',
            "step 2",
            "field device",
        ),
        ('title = "t"', 'titel = "t"', "s.toml", "unknown key 'titel'"),
        (
            'name = "dmar0"',
            'name = "dmar0"\nfrobnicate = true',
            "platform.units[0]",
            "unknown key 'frobnicate'",
        ),
        ('op = "domain_alloc"\nas = "d1"', 'op = "domain_alloc"', "step 1", "field as is required"),
        (
            'op = "domain_alloc"\nas = "d1"',
            'op = "domain_alloc"\nas = "parent"',
            "step 1",
            "already used",
        ),
        (
            'device = "parent"\npasid = "$p1"',
            'device = "d1"\npasid = "$p1"',
            "step 6",
            "is a domain; expected a device",
        ),
        ('pasid = "$p1"', "pasid = 0x100000", "step 6", "PASIDs are 20 bits"),
        ("length = 8", "length = 0", "step 6", "field length = 0"),
    ],
)
def test_errors_name_file_step_and_field(old: str, new: str, where: str, what: str) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    with pytest.raises(ScenarioError) as e:
        parse_scenario(text, "s.toml")
    msg = str(e.value)
    assert msg.startswith("s.toml"), msg
    assert where in msg, msg
    assert what in msg, msg


def test_toml_syntax_and_encoding_errors(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[platform\n")
    with pytest.raises(ScenarioError, match=r"bad\.toml: not valid TOML"):
        load_scenario(p)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(p)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    with pytest.raises(ScenarioError, match=r"\[\[steps\]\]"):
        parse_scenario('[[step]]\nop = "map"\n', "x.toml")


def test_unit_references_and_multi_unit_devices() -> None:
    text = """
[[platform.units]]
name = "a"
[[platform.units]]
name = "b"
[[platform.devices]]
bdf = "00:02.0"
"""
    with pytest.raises(ScenarioError, match="field unit is required with several units"):
        parse_scenario(text, "u.toml")
    with pytest.raises(ScenarioError, match="field unit = 'c': no such unit"):
        parse_scenario(text + 'unit = "c"\n', "u.toml")
    sc = parse_scenario(text + 'unit = "b"\n', "u.toml")
    assert sc.platform.devices[0].name == "00:02.0"


def test_helpers() -> None:
    assert parse_bdf("00:02.0") == 0x10
    assert parse_bdf("0000:3a:1f.7") == 0x3A << 8 | 0x1F << 3 | 7
    with pytest.raises(ValueError):
        parse_bdf("00:02")
    assert parse_size("2MiB") == 2 << 20
    assert parse_size("0x1000") == 4096
    assert parse_size(7) == 7
    with pytest.raises(ValueError):
        parse_size(True)


# --- running scenarios -----------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.toml"))
GOLDEN = Path(__file__).resolve().parent / "golden"


def _golden_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "examples").with_suffix("")
    return "__".join(rel.parts) + ".txt"


def test_examples_exist() -> None:
    names = {p.relative_to(ROOT / "examples").as_posix() for p in EXAMPLES}
    assert {
        "seed_aux_two_vms.toml",
        "mdev_two_vms.toml",
        "pasid_attach_replace_detach.toml",
    } <= names
    assert any(n.startswith("faults/") for n in names)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_golden_outputs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(main, ["run", str(path.relative_to(ROOT))], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    _compare_golden(_golden_name(path), r.output)


def test_demo_golden_and_story() -> None:
    r = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for phrase in (
        "PASID 1",
        "PASID 2",
        '"hello from mdev 1"',
        "fault 0x79",
        "fault 0x59",
        "aux_detach_device",
        "dmar_translation_struct",
        "all 19 steps met",
    ):
        assert phrase in r.output
    _compare_golden("demo.txt", r.output)


def test_demo_file_is_the_example() -> None:
    from vtdsim.scenario.demo import DEMO_TOML

    assert (ROOT / "examples" / "seed_aux_two_vms.toml").read_text() == DEMO_TOML


def _compare_golden(name: str, output: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VTDSIM_REGEN_GOLDEN"):
        path.write_text(output)
    assert path.exists(), f"no golden file {path}: regenerate (see tests/golden/README.md)"
    assert output == path.read_text(), f"output differs from {path} (see tests/golden/README.md)"


def test_failed_expectation_exits_1_and_names_the_step(tmp_path: Path) -> None:
    src = (ROOT / "examples" / "pasid_attach_replace_detach.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(src.replace('expect = { text = "domain B" }', 'expect = { text = "domain A" }'))
    r = CliRunner().invoke(main, ["run", str(bad)])
    assert r.exit_code == 1
    assert 'expected data "domain A" (8 bytes), got "domain B" (8 bytes)' in r.output
    assert "1 of 16 steps failed" in r.output
    r = CliRunner().invoke(main, ["run", str(bad), "--json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["passed"] is False and data["summary"]["failed"] == 1
    failed = [s for s in data["steps"] if not s["passed"]]
    assert failed[0]["step"] == 14
    assert [c["what"] for c in failed[0]["checks"] if not c["passed"]] == ["data"]


def test_step_without_expect_must_succeed(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(
        '[[platform.devices]]\nname = "d"\nbdf = "00:02.0"\npasid_bits = 8\n'
        '[[steps]]\nop = "dma_read"\ndevice = "d"\npasid = 3\naddr = 0\nlength = 4\n'
    )
    r = CliRunner().invoke(main, ["run", str(p)])
    assert r.exit_code == 1
    assert "expected succeeds ok, got fault 0x51 PASID_DIR_ENTRY_P" in r.output


def test_runtime_impossible_value_is_input_error(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(
        '[[steps]]\nop = "vm_create"\nas = "vm"\n'
        '[[steps]]\nop = "vm_add_range"\nvm = "vm"\ngpa = 0x123\nhpa = 0\nsize = "4K"\n'
    )
    r = CliRunner().invoke(main, ["run", str(p)])
    assert r.exit_code == 2
    assert f"{p}: step 2 (op 'vm_add_range'): gpa=0x123 is invalid" in r.output
    assert "ok " not in r.output  # no partial timeline


def test_device_pasid_width_is_checked_before_running() -> None:
    text = BASE.replace('pasid = "$p1"', "pasid = 0x100")
    text = text.replace("pasid_bits = 20\n\n[[steps]]", "pasid_bits = 8\n\n[[steps]]")
    text = text.replace(
        'name = "parent"\nbdf = "00:02.0"\npasid_bits = 20',
        'name = "parent"\nbdf = "00:02.0"\npasid_bits = 8',
    )
    with pytest.raises(ScenarioError, match=r"step 6 .*emits PASIDs below 0x100"):
        parse_scenario(text, "s.toml")


def test_image_out_dump_and_walk_commands(tmp_path: Path) -> None:
    ex = str(ROOT / "examples" / "seed_aux_two_vms.toml")
    img = tmp_path / "mem.raw"
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "run",
            ex,
            "--json",
            "--image-out",
            str(img),
            "--dump",
            "dmar_translation_struct",
            "--dump",
            "invalidation_queue",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["image"] == str(img) and img.stat().st_size == 256 << 20
    (unit,) = data["units"]
    assert unit["name"] == "dmar0" and int(unit["rtaddr"], 16) & 0xC00 == 0x400
    assert data["dumps"]["dmar_translation_struct"].startswith("IOMMU dmar0: Root Table Address")
    assert data["dumps"]["invalidation_queue"].startswith("Invalidation queue on IOMMU: dmar0")
    # the same dump from the image, given RTADDR: identical
    r2 = runner.invoke(
        main, ["dump", "dmar_translation_struct", "--image", str(img), "--rtaddr", unit["rtaddr"]]
    )
    assert r2.exit_code == 0
    assert r2.output == data["dumps"]["dmar_translation_struct"]
    # walk after step 9 (both PASIDs attached) and after the last step (PASID 2 detached)
    r3 = runner.invoke(
        main,
        [
            "walk",
            ex,
            "--after",
            "9",
            "--sid",
            "00:02.0",
            "--pasid",
            "2",
            "--iova",
            "0x100010",
            "--json",
        ],
    )
    assert r3.exit_code == 0, r3.output
    w = json.loads(r3.output)
    assert w["ok"] is True and w["address"] == "0x900010"
    assert [s["stage"] for s in w["steps"]][:4] == ["root", "context", "pasid-dir", "pasid-table"]
    r4 = runner.invoke(main, ["walk", ex, "--sid", "00:02.0", "--pasid", "2", "--iova", "0x100010"])
    assert r4.exit_code == 0
    assert "fault reason 0x59 PASID_ENTRY_P" in r4.output
    r5 = runner.invoke(main, ["walk", ex, "--after", "99", "--sid", "00:02.0", "--iova", "0"])
    assert r5.exit_code == 2 and "--after 99" in r5.output


def test_live_and_image_dumps_agree_for_every_kind(tmp_path: Path) -> None:
    """The dumps read memory and registers only: live model == its exported image."""
    from vtdsim.scenario import debugfs
    from vtdsim.scenario.image import open_image
    from vtdsim.scenario.runner import run_scenario
    from vtdsim.spec import registers as R

    res = run_scenario(load_scenario(ROOT / "examples" / "mdev_two_vms.toml"))
    plat = res.world.platform
    img = tmp_path / "m.raw"
    plat.memory.export_image(img)
    unit = plat.units[0]
    regs = debugfs.StaticRegisters(
        unit.name,
        unit.read64(R.RTADDR),
        iqa=unit.read64(R.IQA),
        iqh=unit.read64(R.IQH),
        iqt=unit.read64(R.IQT),
        ecap=unit.read64(R.ECAP),
        gsts=unit.read32(R.GSTS),
    )
    mem = open_image(img)
    for kind, fn in debugfs.DUMPS.items():
        assert fn(plat.memory, [unit]) == fn(mem, [regs]), kind
    live = debugfs.domain_translation_struct(plat.memory, [unit], all_pasids=True)
    assert "with pasid 1 @" in live


def test_value_of_a_failed_binding_step_fails_later_steps(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(
        '[[platform.devices]]\nname = "d"\nbdf = "00:02.0"\npasid_bits = 8\n'
        '[[steps]]\nop = "domain_alloc"\nas = "x"\n'
        '[[steps]]\nop = "aux_get_pasid"\ndomain = "x"\ndevice = "d"\nas = "p"\n'
        'expect = { errno = "EINVAL" }\n'
        '[[steps]]\nop = "dma_read"\ndevice = "d"\npasid = "$p"\naddr = 0\nlength = 4\n'
    )
    r = CliRunner().invoke(main, ["run", str(p), "--json"])
    assert r.exit_code == 1
    steps = json.loads(r.stdout)["steps"]
    assert [s["passed"] for s in steps] == [True, True, False]
    assert "$p has no value" in steps[2]["error"]


def test_dump_per_device_file_from_scenario_and_bad_options() -> None:
    ex = str(ROOT / "examples" / "seed_aux_two_vms.toml")
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "dump",
            "domain_translation_struct",
            ex,
            "--after",
            "9",
            "--device",
            "00:02.0",
            "--pasid",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith("Device 0000:00:02.0 with pasid 2 @0x")
    assert "0x0000000000100 |" in r.output  # guest-physical 0x100000 is mapped
    r = runner.invoke(main, ["dump", "invalidation_queue", ex, "--device", "00:02.0"])
    assert r.exit_code == 2
    r = runner.invoke(main, ["dump", "domain_translation_struct", ex, "--pasid", "1"])
    assert r.exit_code == 2 and "--pasid needs --device" in r.output
    r = runner.invoke(main, ["dump", "domain_translation_struct", ex, "--device", "0:99"])
    assert r.exit_code == 2 and "BDF" in r.output
