"""Inspecting raw memory images: translation, mapping lists, query files, hostile images."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from vtd_tables import RTADDR_SM, sample
from vtdsim.cli.main import main
from vtdsim.errors import ScenarioError
from vtdsim.hw.caps import Capabilities
from vtdsim.hw.memory import PhysicalMemory
from vtdsim.scenario.image import Query, enumerate_mappings, parse_query, translate


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    b, n = sample()
    path = tmp_path / "mem.raw"
    b.memory.export_image(path, size=8 << 20)
    return path, n


def test_translate_and_faults_on_hand_built_tables() -> None:
    b, _ = sample()
    caps = Capabilities()
    ok = translate(b.memory, caps, RTADDR_SM, Query(0x10, 1, 0x10123))
    assert ok.ok and ok.address == 0x300123
    ro = translate(b.memory, caps, RTADDR_SM, Query(0x10, 1, 0x11000, write=True))
    assert not ro.ok and ro.fault_reason == 0x85  # SM: no write permission
    no_pasid = translate(b.memory, caps, RTADDR_SM, Query(0x10, 9, 0x10000))
    assert no_pasid.fault_reason == 0x59  # PASID entry not present
    no_dev = translate(b.memory, caps, RTADDR_SM, Query(0x20, None, 0))
    assert no_dev.fault_reason == 0x41  # context entry not present
    big = translate(b.memory, caps, RTADDR_SM, Query(0x10, 2, 0x4012_3456))
    assert big.address == 0x723456 and big.page_size == 2 << 20


def test_enumeration_matches_walks() -> None:
    b, _ = sample()
    caps = Capabilities()
    rep = enumerate_mappings(b.memory, caps, RTADDR_SM)
    assert rep.problems == []
    got = {(m.sid, m.pasid, m.iova): (m.address, m.size, m.read, m.write) for m in rep.mappings}
    assert got == {
        (0x10, None, 0x1000): (0x200000, 0x1000, True, True),
        (0x10, 1, 0x10000): (0x300000, 0x1000, True, True),
        (0x10, 1, 0x11000): (0x301000, 0x1000, True, False),
        (0x10, 2, 0x10000): (0x400000, 0x1000, True, True),
        (0x10, 2, 0x4000_0000): (0x600000, 2 << 20, True, True),
        (0x18, None, 0xFFFE_4000): (0x500000, 0x1000, True, True),
    }


def test_parse_query_errors_name_the_place() -> None:
    assert parse_query("00:02.0 - 0xfffe4828 r", "q").sid == 0x10
    for bad, what in [
        ("00:02.0 - 0x1", "expected 4 fields"),
        ("00:02 - 0x1 r", "BDF"),
        ("00:02.0 0x100000 0x1 r", "PASID"),
        ("00:02.0 - zz r", "IOVA"),
        ("00:02.0 - 0x1 x", "access"),
    ]:
        with pytest.raises(ScenarioError, match=what) as e:
            parse_query(bad, "f.txt: line 3")
        assert str(e.value).startswith("f.txt: line 3")


def test_cli_single_query_and_json(image: tuple[Path, dict[str, int]]) -> None:
    path, _ = image
    r = CliRunner().invoke(
        main,
        [
            "inspect",
            "--image",
            str(path),
            "--rtaddr",
            hex(RTADDR_SM),
            "--sid",
            "00:03.0",
            "--iova",
            "0xfffe4828",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.output == "00:03.0 - 0xfffe4828 r -> 0x500828\n"


def test_cli_queries_file_json_schema(image: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, _ = image
    qf = tmp_path / "q.txt"
    qf.write_text("# comment\n00:02.0 1 0x10010 r\n\n00:02.0 1 0x11000 w\n")
    r = CliRunner().invoke(
        main,
        [
            "inspect",
            "--image",
            str(path),
            "--rtaddr",
            hex(RTADDR_SM),
            "--queries",
            str(qf),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data[0] == {
        "sid": "00:02.0",
        "pasid": 1,
        "iova": "0x10010",
        "access": "r",
        "ok": True,
        "address": "0x300010",
    }
    assert data[1]["ok"] is False and data[1]["fault_reason"] == "0x85"
    assert "address" not in data[1]


def test_cli_bad_inputs_exit_2_with_one_message(
    image: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    path, _ = image
    qf = tmp_path / "q.txt"
    qf.write_text("00:02.0 1 0x10010 r\n00:02.0 one 0x11000 w\n")
    runner = CliRunner()
    base = ["inspect", "--image", str(path), "--rtaddr", hex(RTADDR_SM)]
    r = runner.invoke(main, [*base, "--queries", str(qf)])
    assert r.exit_code == 2
    assert f"{qf}: line 2: PASID 'one'" in r.output
    assert "0x300010" not in r.output  # no partial result
    r = runner.invoke(
        main, ["inspect", "--image", str(tmp_path / "none.raw"), "--rtaddr", "0x1400", "--mappings"]
    )
    assert r.exit_code == 2 and "none.raw" in r.output
    r = runner.invoke(
        main, ["inspect", "--image", str(path), "--rtaddr", "0x1_0000_0000_0400", "--mappings"]
    )
    assert r.exit_code == 2 and "beyond the end of the image" in r.output
    r = runner.invoke(main, [*base])
    assert r.exit_code == 2 and "exactly one of" in r.output


def test_hostile_images_fault_or_error_never_crash(tmp_path: Path) -> None:
    caps = Capabilities()
    # garbage: every qword all ones (reserved bits everywhere, pointers far beyond the file)
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\xff" * (64 << 10))
    mem = PhysicalMemory.from_image(junk)
    for rt in (0x1400, 0x1000, 0x1C00):
        for q in (Query(0x10, None, 0), Query(0x10, 5, 0x1234, True), Query(0xFFFF, 0xFFFFF, 1)):
            res = translate(mem, caps, rt, q)
            assert not res.ok and res.fault_reason is not None
        enumerate_mappings(mem, caps, rt)  # returns (problems listed), never raises
    # random bytes
    rnd = tmp_path / "rnd.raw"
    rnd.write_bytes(os.urandom(256 << 10))
    mem = PhysicalMemory.from_image(rnd)
    rep = enumerate_mappings(mem, caps, 0x1400, limit=1 << 16)
    assert isinstance(rep.problems, list)
    # self-referencing tables (a loop): every entry of a page points at the page itself
    loop = PhysicalMemory(1 << 20)
    b, n = sample()
    page = n["vm1"]
    for i in range(512):
        b.memory.write64(page + 8 * i, page | 3)
    rep = enumerate_mappings(b.memory, caps, RTADDR_SM)
    assert any("reached twice" in p for p in rep.problems)
    res = translate(b.memory, caps, RTADDR_SM, Query(0x10, 1, 0x12345000))
    assert isinstance(res.ok, bool)
    assert loop.size == 1 << 20


def test_image_is_never_modified(image: tuple[Path, dict[str, int]]) -> None:
    path, _ = image
    before = path.read_bytes()
    CliRunner().invoke(
        main, ["inspect", "--image", str(path), "--rtaddr", hex(RTADDR_SM), "--mappings"]
    )
    assert path.read_bytes() == before


# --- round trip: a scenario's exported image inspected == the live model ----------------------

ROOT = Path(__file__).resolve().parent.parent
ROUND_TRIP = [
    "seed_aux_two_vms.toml",
    "mdev_two_vms.toml",
    "pasid_attach_replace_detach.toml",
    "faults/page_table.toml",
    "faults/permissions.toml",
]


@pytest.mark.parametrize("example", ROUND_TRIP)
def test_round_trip_image_translations_equal_live_model(example: str, tmp_path: Path) -> None:
    from vtdsim.scenario.runner import run_scenario
    from vtdsim.scenario.schema import load_scenario

    runner = CliRunner()
    img = tmp_path / "mem.raw"
    r = runner.invoke(
        main, ["run", str(ROOT / "examples" / example), "--json", "--image-out", str(img)]
    )
    assert r.exit_code == 0, r.output
    (unit_info,) = json.loads(r.output)["units"]
    rtaddr = unit_info["rtaddr"]
    # the live model, in the same final state (runs are deterministic)
    live = run_scenario(load_scenario(ROOT / "examples" / example))
    unit = live.world.platform.units[0]
    assert f"{unit.read64(0x20):#x}" == rtaddr

    r = runner.invoke(
        main, ["inspect", "--image", str(img), "--rtaddr", rtaddr, "--mappings", "--json"]
    )
    assert r.exit_code == 0, r.output
    listing = json.loads(r.output)
    if example == "faults/permissions.toml":  # a mapping into the interrupt range
        assert listing["problems"] == [
            "00:02.0 PASID 0x1 IOVA 0xfee00000: entry present but the walk faults 0x87 "
            "SM_INTERRUPT_ADDR"
        ]
    else:
        assert listing["problems"] == []
    mappings = listing["mappings"]

    def mapped(sid: str, pasid: int | None, a: int) -> bool:
        return any(
            m["sid"] == sid
            and m["pasid"] == pasid
            and int(m["iova"], 16) <= a < int(m["iova"], 16) + int(m["size"], 16)
            for m in mappings
        )

    queries: list[tuple[str, int | None, int, str]] = []
    for m in mappings:
        sid, pasid = m["sid"], m["pasid"]
        base, size = int(m["iova"], 16), int(m["size"], 16)
        for a in (base, base + size - 8):
            queries += [(sid, pasid, a, "r"), (sid, pasid, a, "w")]
        for a in (base + size, base - 0x1000, 0x7FFF_FFFF_F000):  # unmapped neighbours
            if a >= 0 and not mapped(sid, pasid, a):
                queries.append((sid, pasid, a, "r"))
        queries.append((sid, None if pasid else 1, base, "r"))  # other PASID / no PASID
        queries.append((sid, (pasid or 0) + 7, base, "w"))  # a PASID nobody attached
    queries.append(("01:00.0", None, 0, "r"))  # no context entry
    # every address the scenario's DMA steps used, in the final state
    for step in live.scenario.steps:
        if step.op in ("dma_read", "dma_write"):
            dev = live.world.devices[step.device]
            p = step.pasid
            pv = live.world.values[p[1:]] if isinstance(p, str) else p
            a = step.addr if isinstance(step.addr, int) else live.world.values[step.addr[1:]]
            queries += [(dev.bdf, pv, a, "r"), (dev.bdf, pv, a, "w")]
    qfile = tmp_path / "q.txt"
    qfile.write_text(
        "".join(f"{s} {'-' if p is None else p} {a:#x} {acc}\n" for s, p, a, acc in queries)
    )
    r = runner.invoke(
        main,
        ["inspect", "--image", str(img), "--rtaddr", rtaddr, "--queries", str(qfile), "--json"],
    )
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert len(got) == len(queries)
    n_ok = n_fault = 0
    for (sid, pasid, addr, acc), res in zip(queries, got, strict=True):
        want = unit.translate(
            int(sid[:2], 16) << 8 | int(sid[3:5], 16) << 3 | int(sid[6]),
            addr,
            pasid=pasid,
            write=acc == "w",
        )
        assert res["sid"] == sid and res["pasid"] == pasid and res["iova"] == f"{addr:#x}"
        assert res["ok"] is bool(want.ok), (sid, pasid, hex(addr), acc, res, want)
        if want.ok:
            assert res["address"] == f"{want.address:#x}"
            n_ok += 1
        else:
            assert res["fault_reason"] == f"{want.reason:#04x}", (res, want)
            n_fault += 1
    assert n_fault and (n_ok or not mappings)


def test_multi_gib_sparse_image_is_read_lazily(tmp_path: Path) -> None:
    b, _ = sample()
    path = tmp_path / "big.raw"
    b.memory.export_image(path, size=64 << 20)
    with open(path, "r+b") as f:
        f.truncate(6 << 30)  # a 6 GiB image, sparse: only the tables hold data
    mem = PhysicalMemory.from_image(path)
    assert mem.size == 6 << 30
    rep = enumerate_mappings(mem, Capabilities(), RTADDR_SM)
    assert len(rep.mappings) == 6
    res = translate(mem, Capabilities(), RTADDR_SM, Query(0x18, None, 0xFFFE_4828))
    assert res.address == 0x500828
    # a context entry pointing at a PASID directory 5 GiB in (holes read as zero): a fault
    ctx = b.ctx_tables[(0, 0)] + 32 * 0x18
    with open(path, "r+b") as f:
        f.seek(ctx)
        f.write(((5 << 30) | 0x9).to_bytes(8, "little"))
    mem = PhysicalMemory.from_image(path)
    res = translate(mem, Capabilities(), RTADDR_SM, Query(0x18, None, 0xFFFE_4828))
    assert res.fault_reason == 0x51


def test_bad_images_and_query_files_are_input_errors(
    image: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    path, _ = image
    runner = CliRunner()
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    r = runner.invoke(main, ["inspect", "--image", str(empty), "--rtaddr", "0x400", "--mappings"])
    assert r.exit_code == 2 and "empty.raw" in r.output and "empty" in r.output
    r = runner.invoke(main, ["inspect", "--image", str(tmp_path), "--rtaddr", "0", "--mappings"])
    assert r.exit_code == 2
    binary = tmp_path / "q.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    base = ["inspect", "--image", str(path), "--rtaddr", hex(RTADDR_SM)]
    r = runner.invoke(main, [*base, "--queries", str(binary)])
    assert r.exit_code == 2 and "not UTF-8" in r.output
    blank = tmp_path / "blank.txt"
    blank.write_text("# nothing\n\n")
    r = runner.invoke(main, [*base, "--queries", str(blank)])
    assert r.exit_code == 2 and "holds no query" in r.output
    r = runner.invoke(main, [*base, "--queries", str(tmp_path / "missing.txt")])
    assert r.exit_code == 2 and "missing.txt" in r.output
    r = runner.invoke(main, [*base, "--rtaddr", "zz", "--mappings"])
    assert r.exit_code == 2 and "--rtaddr: 'zz' is not an integer" in r.output
    r = runner.invoke(main, [*base, "--dump", "invalidation_queue"])
    assert r.exit_code == 2 and "--iqa" in r.output
    r = runner.invoke(main, [*base, "--sid", "00:02.0"])
    assert r.exit_code == 2 and "--iova" in r.output


def test_cli_mappings_and_dumps_from_image(image: tuple[Path, dict[str, int]]) -> None:
    path, n = image
    base = ["inspect", "--image", str(path), "--rtaddr", hex(RTADDR_SM)]
    r = CliRunner().invoke(main, [*base, "--mappings"])
    assert r.exit_code == 0
    assert r.output.splitlines()[0] == (
        "00:02.0       - 0x0000000000001000 +0x1000 -> 0x200000 rw second-level"
    )
    r = CliRunner().invoke(
        main, [*base, "--dump", "domain_translation_struct", "--all-pasids", "--json"]
    )
    assert r.exit_code == 0
    text = json.loads(r.output)["domain_translation_struct"]
    assert f"Device 0000:00:02.0 with pasid 1 @0x{n['vm1']:x}" in text


# --- structure-aware fuzzing of hostile images ------------------------------------------------


def _hostile_memory(seed: int, pages: int = 8) -> PhysicalMemory:
    """Pages whose qwords are mostly pointers to other pages of the image (with random low
    flag bits, so many entries look present), some beyond the image, some garbage."""
    import random

    rnd = random.Random(seed)
    mem = PhysicalMemory(pages * 4096)
    for i in range(pages * 512):
        kind = rnd.random()
        if kind < 0.35:
            v = 0
        elif kind < 0.85:
            v = rnd.randrange(pages + 2) * 4096 | rnd.choice((1, 3, 0x9, 0x89, 0x83, 0xE09))
        else:
            v = rnd.getrandbits(64)
        mem.write64(8 * i, v)
    return mem


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    rt_page=st.integers(0, 9),
    ttm=st.integers(0, 3),
    sid=st.integers(0, 0xFFFF),
    pasid=st.one_of(st.none(), st.integers(0, (1 << 20) - 1)),
    iova=st.integers(0, (1 << 64) - 1),
    write=st.booleans(),
)
def test_fuzz_hostile_images_never_crash(
    seed: int, rt_page: int, ttm: int, sid: int, pasid: int | None, iova: int, write: bool
) -> None:
    from vtdsim.scenario.debugfs import DUMPS, StaticRegisters

    mem = _hostile_memory(seed)
    caps = Capabilities()
    rtaddr = rt_page * 4096 | ttm << 10
    res = translate(mem, caps, rtaddr, Query(sid, pasid, iova, write))
    assert res.ok or res.fault_reason is not None
    try:
        rep = enumerate_mappings(mem, caps, rtaddr, limit=1 << 10)
    except ScenarioError:
        pass  # too many mappings: a typed error
    else:
        for m in rep.mappings[:50]:
            if m.kind == "pass-through":
                continue
            got = translate(mem, caps, rtaddr, Query(m.sid, m.pasid, m.iova))
            if m.read:
                assert got.ok and got.address == m.address
    regs = StaticRegisters("dmar0", rtaddr, iqa=rt_page * 4096 | 1 << 11, iqh=0, iqt=32)
    for fn in DUMPS.values():
        with contextlib.suppress(ScenarioError):
            assert isinstance(fn(mem, [regs]), str)
