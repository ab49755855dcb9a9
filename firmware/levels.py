# Statistical levels (LN) from a preallocated histogram of 0.1 dB bins: no allocation per reading
# and a fixed size whatever the interval's length.
from array import array
from micropython import const

LO = const(-200)  # lowest bin, in tenths of dB: -20.0 dB
HI = const(1400)  # highest bin: 140.0 dB; readings outside are counted in the end bins


class Histogram:
    def __init__(self):
        # sized from the range's length, then zeroed: no temporary as large as the counts
        self.counts = c = array("H", range(HI - LO + 1))
        for i in range(len(c)):
            c[i] = 0
        self.n = 0

    def add(self, level):
        self.add_tenths(int(level * 10.0 + 0.5) if level >= 0 else -int(-level * 10.0 + 0.5))

    def add_tenths(self, k):
        """A reading in tenths of a dB: small ints only."""
        if k < LO:
            k = LO
        elif k > HI:
            k = HI
        k -= LO
        c = self.counts
        if c[k] < 65535:  # saturate rather than wrap (more than 2 h in one bin)
            c[k] += 1
        self.n += 1

    def exceeded(self, percent):
        """LN: the highest level that at least `percent` % of the readings reach or exceed.

        With the readings sorted high to low, it is the one at rank ceil(percent * n / 100)
        (rank 1 at least), to the 0.1 dB of its bin. None without readings."""
        if not self.n:
            return None
        rank = (percent * self.n + 99) // 100
        if rank < 1:
            rank = 1
        c = self.counts
        seen = 0
        k = HI - LO
        while k > 0:
            seen += c[k]
            if seen >= rank:
                break
            k -= 1
        return (k + LO) / 10.0

    def reset(self):
        c = self.counts
        for k in range(len(c)):
            c[k] = 0
        self.n = 0
