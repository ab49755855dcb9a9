# The bench board's power-on (hil_tests/rigs/benchboard.py): mount the flash image as startup.py does,
# then run boot.py and main.py if the flash holds them, as MicroPython does on an ESP32; a blank
# board stays at the REPL (the host runs the unix port with -i then). The host wires the console
# as the REPL needs it (blocking reads) or as the application's asyncio stream needs it
# (non-blocking), so it first asks, with console "probe": exit code 5 = an application, 6 = none.
import os
import sys

import startup

try:
    os.stat("main.py")
    _app = True
except OSError:
    _app = False
_console = startup._CFG.get("console")
if _console == "probe":
    sys.exit(5 if _app else 6)
if _app and _console == "app":
    import boot  # noqa: F401
    import main  # noqa: F401
