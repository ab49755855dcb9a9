# The hardware layer's clock on the emulated board (tools/sim/board: machine.RTC as the ESP32
# port's, time.time_ns): `set OFFSET_MS` sets the RTC OFFSET_MS ahead of the board's clock now,
# as a gateway's time frame would; `read` is the next boot's reading. Run by tests/test_rtc.py.
import sys

import hw

h = hw.Hardware()
if sys.argv[1] == "set":
    h.set_epoch_ms(h.epoch_ms() + int(sys.argv[2]))
print(h.epoch_ms())
