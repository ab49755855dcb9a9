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
    counted = node.count_boot()  # a crash from here on is a crashed boot
    # the sensor's code and buffers first, while the heap still has large holes; a link-only
    # node (after a crash loop) loads none
    pipeline = sensors.pipeline(cfg["sensor"], None if node.crash_looping(counted) else cfg)
    runtime = node.Node(cfg, board, counted=counted)
    asyncio.run(runtime.main(pipeline))
except KeyboardInterrupt:
    raise
except Exception as exc:  # noqa: BLE001 (whatever failed, the board must come back)
    sys.print_exception(exc, sys.stderr)  # type: ignore[arg-type]  # stdout may be the link
    board.reset()
