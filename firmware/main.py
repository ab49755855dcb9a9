# Started by MicroPython after boot.py: load the node's config and run its pipeline. Any crash
# resets the board (a board left at the REPL measures nothing); the node counts such boots and
# falls back to link-only after a few (node.CRASH_BOOTS).
import asyncio
import sys

import hw
import node
import sensors

board = hw.Hardware()
try:
    cfg = node.load_config()
    runtime = node.Node(cfg, board)
    asyncio.run(runtime.main(sensors.pipeline(cfg["sensor"])))
except KeyboardInterrupt:
    raise
except Exception as exc:  # noqa: BLE001 (whatever failed, the board must come back)
    sys.print_exception(exc, sys.stderr)  # type: ignore[arg-type]  # stdout may be the link
    board.reset()
