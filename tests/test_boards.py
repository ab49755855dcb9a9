"""Board files: every one passes the schema and its chip check; broken boards are caught with a
line that names the pin; offsets agree with esptool's own chip definitions; the generated
constants file says under MicroPython what the board file says."""

import copy
import json
from pathlib import Path

import pytest
from esptool.targets import CHIP_DEFS

from mprun import ROOT, run_micropython
from sensorcity.errors import FatalError
from sensorcity.tools.bench import boards

BOARDS = ROOT / "boards"


def raw(board_id):
    return json.loads((BOARDS / f"{board_id}.json").read_text())


def test_the_three_bench_boards_exist_and_pass():
    assert boards.board_ids() == ["esp32-devkitc", "esp32-s3-devkitc-1", "olimex-esp32-poe"]
    for bid in boards.board_ids():
        errors, _ = boards.check(raw(bid), bid)
        assert errors == [], (bid, errors)


def test_image_offset_is_where_esptool_puts_the_bootloader():
    # esptool's chip classes are an independent source of the ROM's boot offset
    for bid in boards.board_ids():
        b = raw(bid)
        assert boards.image_offset(b) == CHIP_DEFS[b["chip"]].BOOTLOADER_FLASH_OFFSET, bid
    assert boards.image_offset(raw("esp32-devkitc")) == 0x1000
    assert boards.image_offset(raw("esp32-s3-devkitc-1")) == 0x0


def test_replay_keys_are_kept():
    assert raw("esp32-devkitc")["mic"] == "inmp441"
    assert raw("esp32-s3-devkitc-1")["mic"] == "ics43434"
    for bid in boards.board_ids():
        assert {"mic", "mic_sensitivity_dbfs", "mic_rate"} <= raw(bid).keys()


def broken(board_id, change):
    b = copy.deepcopy(raw(board_id))
    change(b)
    return boards.check(b, board_id)


@pytest.mark.parametrize("board_id, change, words", [
    ("esp32-devkitc", lambda b: b["i2s"].update(sck=20), "GPIO20 does not exist on esp32"),
    ("esp32-devkitc", lambda b: b["i2s"].update(ws=35), "GPIO35 is input-only"),
    ("esp32-devkitc", lambda b: b["uarts"]["p1"].update(tx=39), "GPIO39 is input-only"),
    ("esp32-devkitc", lambda b: b["loops"].__setitem__(0, 7), "GPIO7 is wired to the SPI flash"),
    ("esp32-s3-devkitc-1", lambda b: b["i2s"].update(sd=30), "GPIO30 is wired to the SPI flash"),
    ("esp32-s3-devkitc-1", lambda b: b["loops"].__setitem__(0, 23), "GPIO23 does not exist"),
    ("esp32-devkitc", lambda b: b["loops"].__setitem__(0, 26), "GPIO26 is already used by i2s"),
    ("esp32-devkitc", lambda b: b.update(image_offset="0x0"), "goes at 0x1000"),
    ("esp32-s3-devkitc-1", lambda b: b.update(image_offset="0x1000"), "goes at 0x0"),
    ("esp32-devkitc", lambda b: b.update(loops=[32, 35, 34]), "loop pins in pairs"),
    ("olimex-esp32-poe", lambda b: b["sensors"].append("noise"), "noise needs i2s"),
    ("esp32-devkitc", lambda b: b.pop("mic_rate"), "'mic_rate' is a required property"),
    ("esp32-devkitc", lambda b: b.update(flash_size="3MB"), "flash_size"),
    ("esp32-devkitc", lambda b: b.update(pins={}), "Additional properties"),
])
def test_a_broken_board_is_named(board_id, change, words):
    errors, _ = broken(board_id, change)
    assert any(words in e for e in errors), errors


def test_strapping_and_usb_pins_are_warned_not_refused():
    errors, warnings = boards.check(raw("olimex-esp32-poe"), "olimex-esp32-poe")
    assert errors == [] and any("GPIO12 is a strapping pin" in w for w in warnings)
    errors, warnings = broken("esp32-s3-devkitc-1", lambda b: b["loops"].__setitem__(0, 19))
    assert errors == [] and any("GPIO19 is the USB console" in w for w in warnings)
    assert boards.check(raw("esp32-devkitc"))[1] == []


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(FatalError, match="esp32-devkitc, esp32-s3-devkitc-1, olimex-esp32-poe"):
        boards.load("esp32-wrover")
    with pytest.raises(FatalError):
        boards.load("schema")


def test_firmware_board_py_is_the_devkitc_default():
    assert (ROOT / "firmware" / "board.py").read_text() == boards.generate(boards.load(
        "esp32-devkitc"))


@pytest.mark.unixport
def test_generated_constants_under_micropython(tmp_path):
    for bid in boards.board_ids():
        b = raw(bid)
        d = tmp_path / bid
        d.mkdir()
        (d / "board.py").write_text(boards.generate(b))
        script = d / "show.py"
        script.write_text("import json, board\nprint(json.dumps([board.BOARD, board.CHIP, "
                          "board.I2S_SCK, board.I2S_WS, board.I2S_SD, board.MIC, "
                          "board.MIC_SENSITIVITY_DBFS, board.MIC_RATE, board.P1_RX, board.P1_TX, "
                          "list(board.LOOP_PINS)]))\n")
        out = json.loads(run_micropython(script, path=[d]).stdout)
        i2s = b["i2s"] or {}
        assert out == [bid, b["chip"], i2s.get("sck"), i2s.get("ws"), i2s.get("sd"), b["mic"],
                       b["mic_sensitivity_dbfs"], b["mic_rate"], b["uarts"]["p1"]["rx"],
                       b["uarts"]["p1"]["tx"], b["loops"]]


def test_provision_checks_the_board_and_keeps_location(tmp_path):
    from sensorcity.tools.bench.provision import parse_location, provision
    reg, out = tmp_path / "reg.json", tmp_path / "n.json"
    with pytest.raises(FatalError, match="board olimex-esp32-poe has no noise input"):
        provision("n1", "noise", reg, out, board="olimex-esp32-poe")
    with pytest.raises(FatalError, match="is unknown"):
        provision("n1", "noise", reg, out, board="esp32-c3-mini")
    with pytest.raises(FatalError, match="six hex bytes"):
        provision("n1", "noise", reg, out, mac="24:0a:c4")
    for bad in ("52.1", "52.1;5.2", "91,5", "52,181"):
        with pytest.raises(FatalError, match="--location"):
            parse_location(bad)
    assert not out.exists() and not reg.exists()
    cfg = provision("p1", "energy", reg, out, board="olimex-esp32-poe", mac="24-0A-C4-12-34-56",
                    location=parse_location("52.0907,5.1214"), calibration_db=-1.5)
    saved = json.loads(out.read_text())
    assert saved == cfg and saved["board"] == "olimex-esp32-poe"
    assert saved["location"] == {"lat": 52.0907, "lon": 5.1214}
    assert saved["base_name"] == "urn:dev:mac:240ac4123456:" and saved["calibration_db"] == -1.5
