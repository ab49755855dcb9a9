"""What the emulated-hardware tests share: the command, free ports."""

import socket
import sys
from pathlib import Path

SENSORCITY = str(Path(sys.executable).parent / "sensorcity")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- node targets, as data -------------------------------------------------------------------
# Tests ask for the `node` fixture and do not know what runs the firmware (labgrid's idea): the
# unix-port emulator, the QEMU board, or a real board on the serial port given to pytest with
# `--port DEV` (opt-in; without the flag the board target is not collected, and tests marked
# `board` are skipped). Each target's marks select it (`pytest -m qemu`).
NODE_TARGETS = {
    "unix": {"driver": "emulate", "target": "unix", "marks": ("unixport",)},
    "qemu": {"driver": "emulate", "target": "qemu", "marks": ("qemu",)},
    "board": {"driver": "board", "marks": ("board",)},
}


class EmulatedNodeTarget:
    """`sensorcity emulate --target T` with its link on one end of a VirtualCable (faults both
    ways if given); start() returns the other end's device, for the gateway's --serial."""

    injects_faults = True

    def __init__(self, target):
        self.target = target
        self.cable = self.proc = None

    def start(self, config, faults=None, heap="128k"):
        import subprocess

        from .serialmock import VirtualCable
        self.cable = VirtualCable(faults, faults)
        self.proc = subprocess.Popen(
            [SENSORCITY, "emulate", "--config", str(config), "--port", self.cable.a,
             "--target", self.target, "--heap", heap],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self.cable.b

    def stop(self):
        """Stop the node; its stderr, for an assertion's message."""
        err = ""
        if self.proc:
            self.proc.terminate()
            err = self.proc.communicate(timeout=10)[1]
            self.proc = None
        if self.cable:
            self.cable.close()
            self.cable = None
        return err


class BoardNodeTarget:
    """A real ESP32 on `port`: the firmware and the node's config copied to its filesystem with
    mpremote, then a reset; its USB serial is the link, so start() returns the port itself."""

    injects_faults = False  # a real cable: line faults need a proxy in it

    def __init__(self, port):
        self.port = port

    def start(self, config, faults=None, heap=None):
        import json
        import subprocess
        import tempfile

        from sensorcity.paths import firmware_dir
        from sensorcity.tools.mpy import compile_dir
        fw = compile_dir(firmware_dir(), march="xtensawin")
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "node.json"
            cfg.write_text(json.dumps(dict(json.loads(Path(config).read_text()),
                                           link={"serial": True})))
            files = sorted(str(f) for f in fw.iterdir() if f.suffix in (".mpy", ".py"))
            mpremote = str(Path(sys.executable).parent / "mpremote")
            subprocess.run([mpremote, "connect", self.port, "cp", *files, str(cfg), ":",
                            "+", "reset"], check=True, capture_output=True, timeout=120)
        return self.port

    def stop(self):
        return ""


def node_target(name, port=None):
    spec = NODE_TARGETS[name]
    if spec["driver"] == "board":
        return BoardNodeTarget(port)
    return EmulatedNodeTarget(spec["target"])
