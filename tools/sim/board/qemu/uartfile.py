# The replay's input on the QEMU board as a file: exactly `length` bytes from a UART (the host
# writes the recording into UART1's pty), then end of file, so the replay driver reads it as it
# reads a file on the unix port.


class UartFile:
    def __init__(self, uart, length, timeout_ms=10000):
        uart.init(timeout=timeout_ms)  # a read waits this long for its first byte
        self.uart = uart
        self.left = length
        self._buf = bytearray(256)
        self._pend = b""

    def readinto(self, buf):
        if self.left <= 0:
            return 0
        mv = memoryview(buf)
        if len(mv) > self.left:
            mv = mv[:self.left]
        n = self.uart.readinto(mv)
        if not n:
            raise OSError("replay input stalled with %d bytes to come" % self.left)
        self.left -= n
        return n

    def readline(self):
        p = self._pend
        while b"\n" not in p and self.left > 0:
            n = self.readinto(self._buf)
            p += self._buf[:n]
        i = p.find(b"\n") + 1 or len(p)
        self._pend = p[i:]
        return p[:i]
