# Board constants: generated from boards/esp32-devkitc.json by `sensorcity flash app`;
# edit the board file and regenerate (python -m sensorcity.tools.boards), not this file.
from micropython import const

BOARD = "esp32-devkitc"
CHIP = "esp32"
I2S_SCK = const(26)
I2S_WS = const(25)
I2S_SD = const(33)
MIC = "inmp441"
MIC_SENSITIVITY_DBFS = -26.0
MIC_RATE = const(48000)
P1_RX = const(16)
P1_TX = const(17)
LOOP_PINS = (32, 35, 34, 39)
