"""The sensor kinds, declared once as data: what each measures, what its node reads, what `replay`
takes as input and what the emulated board is fed with. `provision`, the CLI, the emulators,
`replay` and the demo read this table. The firmware keeps its own list of the modules each kind
loads (firmware/sensors.py), since nothing on the host side reaches a board."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FatalError


@dataclass(frozen=True)
class Kind:
    name: str
    measures: str        # one line for --help and docs
    sensor: str          # what the node reads
    replay_flag: str     # `replay <name> --<flag> FILE`
    replay_input: str    # what that file holds
    replay_text: bool    # the recording is text (read line by line), not bytes
    peripheral: str      # the unix-port board's input for it (tools/sim/board/machine.py)


KINDS = {k.name: k for k in (
    Kind("noise", "sound levels, A-weighted (an I2S MEMS microphone)", "microphone",
         "wav", "a WAV of the microphone's raw output", False, "i2s"),
    Kind("energy", "a smart meter's P1 port (DSMR telegrams)", "meter",
         "p1", "a P1 byte stream", False, "uart2"),
    Kind("traffic", "vehicles over dual loop detectors, per lane", "loops",
         "edges", "a loop-edge CSV t,lane,loop,state", True, "edges"),
)}
NAMES = tuple(KINDS)


def get(name: object, where: str = "sensor") -> Kind:
    """The kind called `name`, or one line naming the kinds there are."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise FatalError(f"{where} {name!r}: use one of {', '.join(NAMES)}")
    return kind
