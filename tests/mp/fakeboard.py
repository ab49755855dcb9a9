# The board a Node runs on in the unix-port tests: an RTC, a heap figure and a reset counter.


class Board:
    def __init__(self, epoch_ms):
        self.rtc = epoch_ms
        self.resets = 0

    def epoch_ms(self):
        return self.rtc

    def set_epoch_ms(self, ms):
        self.rtc = ms

    def free_heap(self):
        return 1000

    def reset(self):
        self.resets += 1
