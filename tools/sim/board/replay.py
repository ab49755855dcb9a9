# Replay on the emulated board: a recording drives the firmware's own pipelines (noise.py, p1.py
# with energy.py, loops.py) on the recording's clock, and every interval's records leave as link
# frames, as the node would send them. The input's first sample, byte or edge is t = 0.
# Unix port: `micropython replay.py kind input interval key-hex node-id base-name options-json`
# reads the input file and writes the frames to stdout, the counters to stderr. On QEMU the host
# calls run() with the input as a stream (tools/sim/board/qemu/) and a frame writer.
import gc
import json
import sys

import link
import senml
from records import energy_records, noise_records, traffic_records

seq = 0
peak = 0
_cfg = {}


def emit(t, records):
    global seq, peak
    c = _cfg
    c["write"](link.encode_frame(c["key"], link.DATA, c["node_id"], seq,
                                 senml.pack(c["base_name"], t, records)))
    seq += 1
    gc.collect()
    peak = max(peak, gc.mem_alloc())


def noise(f, interval, opts):
    from noise import NoiseMeter
    rate = opts["rate"]
    m = NoiseMeter(rate, opts["sensitivity"], opts.get("offset", 0.0), opts["mic"])
    per = rate * interval  # samples per interval
    buf = bytearray(4096)
    mv = memoryview(buf)
    t = 0
    have = 0  # samples fed in the open interval
    while True:
        want = min(1024, per - have)
        n = f.readinto(mv[:want * 4]) // 4
        if n == 0:
            break
        m.feed(buf, n)
        have += n
        if have == per:
            emit(t, noise_records(m.QUANTITIES, m.take()))
            t += interval
            have = 0
    if have:
        levels = m.take()  # the last, partial interval
        if levels:
            emit(t, noise_records(m.QUANTITIES, levels))
    return {}


def energy(f, interval, opts):
    from energy import EnergyInterval
    from p1 import P1Reader
    reader = P1Reader()
    import sensors
    cipher = sensors._p1_cipher(opts, reader)  # an encrypted line, as the node's config gives it
    src = cipher or reader
    agg = EnergyInterval(reader, cipher)
    add = agg.add
    st = {"last": None, "n": 0, "t": 0, "end": interval, "jumps": 0}

    def close():
        emit(st["end"] - interval, energy_records(agg.take(exact=True)))
        st["end"] += interval

    def on_telegram(values, have):
        # The meter's own clock (0-0:1.0.0) where it sends one. Without one (DSMR 2.2/3), or
        # where it stands still (a telegram repeated), the meter's period: 1 s for DSMR 5, else
        # 10 s. A clock that steps back or leaps over an hour (a meter set, a paused capture) is
        # not followed: the replay clock moves on by one period and the jump is counted.
        clock = reader.clock
        if st["n"]:
            period = 1 if reader.version >= 50 else 10
            dt = clock - st["last"] if clock >= 0 and st["last"] is not None else period
            if not 0 < dt <= 3600:
                if dt:
                    st["jumps"] += 1
                dt = period
            st["t"] += dt
        st["last"] = clock if clock >= 0 else None
        st["n"] += 1
        while st["t"] >= st["end"]:
            close()
        add(values, have)

    reader.on_telegram = on_telegram
    buf = bytearray(512)
    while True:
        n = f.readinto(buf)
        if not n:
            break
        src.feed(buf, n)
    src.close()
    close()  # the last, partial interval
    counters = {"telegrams": reader.telegrams, "crc_errors": reader.crc_errors,
                "malformed": reader.malformed, "overflows": reader.overflows,
                "clock_jumps": st["jumps"]}
    if cipher:
        counters.update(p1_frames=cipher.frames, decrypt_errors=cipher.decrypt_errors)
    return counters


def traffic(f, interval, opts):
    import loops
    mask = (1 << 30) - 1  # a board's ticks_us wrap
    lanes = opts["lanes"]
    lp = loops.Loops(lanes=lanes, loop_length=opts["loop_length"],
                     loop_spacing=opts["loop_spacing"], start_us=0)
    ring = loops.EdgeRing(64)
    step = interval * 1000000
    st = {"end": step, "idx": 0}

    def take():
        lp.drain(ring)
        emit(st["idx"] * interval, traffic_records(lp.take(st["end"] & mask)))
        st["idx"] += 1
        st["end"] += step

    last = 0
    while True:
        line = f.readline()
        if not line:
            break
        try:
            e = loops.parse_edge(line if isinstance(line, str) else line.decode())
        except ValueError:  # a UnicodeError is one too
            lp.bad += 1
            continue
        if e is None:
            continue
        lane, loop, state, t = e
        while t >= st["end"] + lp.grace_us:  # the runtime's contract: take after the grace
            take()
        ring.push(lane, loop, state, t & mask)
        last = max(last, t)
        if len(ring) >= 32:
            lp.drain(ring)
    while st["end"] <= last:
        take()
    take()  # the last, partial interval
    return {"unmatched": lp.unmatched, "chatter": lp.chatter, "double": lp.double,
            "implausible": lp.implausible, "stopped": lp.stopped, "bad": lp.bad,
            "lost": lp.lost}


def run(kind, f, interval, key, node_id, base_name, opts, write):
    """Replays the input stream f (readinto, readline) into frames given to write(frame);
    returns the counters."""
    global seq, peak
    seq = peak = 0
    _cfg.update(key=key, node_id=node_id, base_name=base_name, write=write)
    counters = {"noise": noise, "energy": energy, "traffic": traffic}[kind](f, interval, opts)
    counters["frames"] = seq
    counters["heap_peak"] = peak
    return counters


if __name__ == "__main__":
    import binascii
    kind, path, interval, key_hex, node_id, base_name, opts = sys.argv[1:8]
    out = getattr(sys.stdout, "buffer", sys.stdout)
    with open(path, "r" if kind == "traffic" else "rb") as f:
        counters = run(kind, f, int(interval), binascii.unhexlify(key_hex), node_id, base_name,
                       json.loads(opts), out.write)
    sys.stderr.write(json.dumps(counters) + "\n")
