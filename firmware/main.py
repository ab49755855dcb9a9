# Started by MicroPython after boot.py: load the node's config and run its pipeline.
import asyncio

import hw
import node
import sensors

cfg = node.load_config()
runtime = node.Node(cfg, hw.Hardware())
asyncio.run(runtime.main(sensors.pipeline(cfg["sensor"])))
