# A host file read through ARM semihosting (QEMU's -semihosting-config target=native): the
# replay's bulk input, audio, at memory speed. UART1 moves 8-21 kB/s in QEMU, a tenth of what
# 48 kHz audio in 32-bit words needs (192 kB/s); see docs/qemu.md.
import micropython
import uctypes
from array import array
from micropython import const

_OPEN = const(0x01)
_CLOSE = const(0x02)
_READ = const(0x06)
_MODE_RB = const(1)


@micropython.asm_thumb
def _call(r0, r1):
    data(2, 0xBEAB)  # bkpt 0xAB: the host runs operation r0 on the argument block at r1


class HostFile:
    def __init__(self, path):
        self._name = path.encode() + b"\0"
        self._args = array("I", [uctypes.addressof(self._name), _MODE_RB, len(self._name) - 1])
        self.fd = _call(_OPEN, self._args)
        if self.fd == -1:
            raise OSError("semihosting: cannot open " + path)

    def readinto(self, buf):
        a = self._args
        a[0] = self.fd
        a[1] = uctypes.addressof(buf)
        a[2] = len(buf)
        return len(buf) - _call(_READ, a)  # the host returns the count it did not read

    def close(self):
        self._args[0] = self.fd
        _call(_CLOSE, self._args)
