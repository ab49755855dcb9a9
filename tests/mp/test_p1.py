# P1 reader under the unix port: framing, rejection and no-allocation properties, with values
# read by hand from the meters' own telegrams (tests/test_p1.py compares against dsmr-parser).
import gc
import p1
import energy

# dsmr_v5_iskra_mt382.txt and dsmr_v2_2_iskra_mt382.txt from ../shared/data/dsmr (CRC by the meter)
V5 = (
    b'/ISk5\\2MT382-1000\r\n'
    b'\r\n'
    b'1-3:0.2.8(50)\r\n'
    b'0-0:1.0.0(170102192002W)\r\n'
    b'0-0:96.1.1(4B384547303034303436333935353037)\r\n'
    b'1-0:1.8.1(000004.426*kWh)\r\n'
    b'1-0:1.8.2(000002.399*kWh)\r\n'
    b'1-0:2.8.1(000002.444*kWh)\r\n'
    b'1-0:2.8.2(000000.000*kWh)\r\n'
    b'0-0:96.14.0(0002)\r\n'
    b'1-0:1.7.0(00.244*kW)\r\n'
    b'1-0:2.7.0(00.000*kW)\r\n'
    b'0-0:96.7.21(00013)\r\n'
    b'0-0:96.7.9(00000)\r\n'
    b'1-0:99.97.0(0)(0-0:96.7.19)\r\n'
    b'1-0:32.32.0(00000)\r\n'
    b'1-0:52.32.0(00000)\r\n'
    b'1-0:72.32.0(00000)\r\n'
    b'1-0:32.36.0(00000)\r\n'
    b'1-0:52.36.0(00000)\r\n'
    b'1-0:72.36.0(00000)\r\n'
    b'0-0:96.13.0()\r\n'
    b'1-0:32.7.0(0230.0*V)\r\n'
    b'1-0:52.7.0(0230.0*V)\r\n'
    b'1-0:72.7.0(0229.0*V)\r\n'
    b'1-0:31.7.0(0.48*A)\r\n'
    b'1-0:51.7.0(0.44*A)\r\n'
    b'1-0:71.7.0(0.86*A)\r\n'
    b'1-0:21.7.0(00.070*kW)\r\n'
    b'1-0:41.7.0(00.032*kW)\r\n'
    b'1-0:61.7.0(00.142*kW)\r\n'
    b'1-0:22.7.0(00.000*kW)\r\n'
    b'1-0:42.7.0(00.000*kW)\r\n'
    b'1-0:62.7.0(00.000*kW)\r\n'
    b'0-1:24.1.0(003)\r\n'
    b'0-1:96.1.0(3232323241424344313233343536373839)\r\n'
    b'0-1:24.2.1(170102161005W)(00000.107*m3)\r\n'
    b'0-2:24.1.0(003)\r\n'
    b'0-2:96.1.0()\r\n'
    b'!6EEE\r\n'
)
V22 = (
    b'/ISk5\\2MT382-1004\r\n'
    b'\r\n'
    b'0-0:96.1.1(00000000000000)\r\n'
    b'1-0:1.8.1(00001.001*kWh)\r\n'
    b'1-0:1.8.2(00001.001*kWh)\r\n'
    b'1-0:2.8.1(00001.001*kWh)\r\n'
    b'1-0:2.8.2(00001.001*kWh)\r\n'
    b'0-0:96.14.0(0001)\r\n'
    b'1-0:1.7.0(0001.01*kW)\r\n'
    b'1-0:2.7.0(0000.00*kW)\r\n'
    b'0-0:17.0.0(0999.00*kW)\r\n'
    b'0-0:96.3.10(1)\r\n'
    b'0-0:96.13.1()\r\n'
    b'0-0:96.13.0()\r\n'
    b'0-1:24.1.0(3)\r\n'
    b'0-1:96.1.0(000000000000)\r\n'
    b'0-1:24.3.0(161107190000)(00)(60)(1)(0-1:24.2.1)(m3)\r\n'
    b'(00001.001)\r\n'
    b'0-1:24.4.0(1)\r\n'
    b'!\r\n'
)


def parity(data):
    # 7E1 as an 8N1 UART sees it: even parity in bit 7
    out = bytearray(data)
    for i in range(len(out)):
        b = out[i]
        ones = 0
        while b:
            ones += b & 1
            b >>= 1
        if ones & 1:
            out[i] |= 0x80
    return bytes(out)


def test_v5_values_by_hand():
    r = p1.P1Reader()
    e = energy.EnergyInterval(r)
    assert r.feed(V5) == 1
    got = {n: (u, v) for n, u, v in e.take(True)}
    assert got["energy_import_t1"] == ("kWh", 4426)
    assert got["energy_import_t2"] == ("kWh", 2399)
    assert got["energy_export_t1"] == ("kWh", 2444)
    assert got["energy_export_t2"] == ("kWh", 0)
    assert got["power_import"] == ("W", 244000)
    assert got["voltage_l3"] == ("V", 229000)
    assert got["current_l3"] == ("A", 860)
    assert got["gas_volume"] == ("m3", 107)  # channel 1; channel 2 is a gas meter without reading
    assert got["p1_crc_errors"] == ("count", 0)
    assert len(got) == 14


def test_float_take_and_means():
    r = p1.P1Reader()
    e = energy.EnergyInterval(r)
    other = V5.replace(b"1-0:1.7.0(00.244*kW)", b"1-0:1.7.0(00.245*kW)")
    r.feed(V5)
    r.feed(other)  # CRC no longer matches: rejected, not averaged
    r.feed(V5 + V5)
    got = {n: v for n, u, v in e.take()}
    assert abs(got["power_import"] - 244.0) < 1e-9
    assert abs(got["energy_import_t1"] - 4.426) < 1e-9
    assert got["p1_crc_errors"] == 1 and r.crc_errors == 1 and r.telegrams == 3
    assert e.take() == [("p1_crc_errors", "count", 0)]  # an interval without telegrams


def test_byte_by_byte_and_chunk_length():
    r = p1.P1Reader()
    buf = bytearray(1)
    n = 0
    for b in V5:
        buf[0] = b
        n += r.feed(buf)
    assert n == 1
    junk = bytearray(V5 + b"/garbage that must not be read")
    assert r.feed(junk, len(V5)) == 1 and r.fragments == 0


def test_v22_without_crc_and_with_7e1_parity_bits():
    r = p1.P1Reader()
    e = energy.EnergyInterval(r)
    assert r.feed(V22) == 1
    assert r.feed(parity(V22)) == 1
    got = {n: v for n, u, v in e.take(True)}
    assert got["gas_volume"] == 1001 and got["power_import"] == 1010000
    bad = bytearray(parity(V22))
    bad[100] ^= 0x04  # one bit of a 7E1 character: the parity bit catches it
    assert r.feed(bad) == 0 and r.parity_errors == 1 and r.malformed == 1


def test_high_bit_on_an_8n1_telegram_fails_its_crc():
    r = p1.P1Reader()
    bad = bytearray(V5)
    bad[200] |= 0x80
    bad[0] |= 0x80  # a '/' with bit 7 set still starts a telegram
    assert r.feed(bad + V5) == 1 and r.crc_errors == 1 and r.fragments == 0


def test_noise_with_slash_is_a_fragment_not_a_rejection():
    r = p1.P1Reader()
    assert r.feed(b"\x00\xff/\x12~~" + V5 + b"!!\r\n" + V5) == 2
    assert r.fragments == 1 and r.rejected() == 0


def test_truncated_then_resync():
    r = p1.P1Reader()
    assert r.feed(V5[:300] + V5) == 1
    assert r.truncated == 1 and r.malformed == 1


def test_crc_seen_makes_a_crc_mandatory():
    r = p1.P1Reader()
    assert r.feed(V5) == 1
    assert r.feed(V5[: V5.index(b"!") + 1] + b"\r\n") == 0 and r.malformed == 1


def test_overflow_is_bounded_and_counted():
    r = p1.P1Reader(512)
    assert r.feed(V5 + V22) == 1  # V5 is 890 bytes
    assert r.overflows == 1 and r.telegrams == 1


def test_last_telegram_without_line_end():
    assert p1.P1Reader().feed(V5[:-2]) == 1  # the fourth CRC digit completes it
    r = p1.P1Reader()
    assert r.feed(V22[:-2]) == 0 and r.close() == 1  # v2.2 "!" at end of stream


def test_never_raises_on_random_bytes():
    r = p1.P1Reader(256)
    x = 12345
    buf = bytearray(97)
    for _ in range(300):
        for i in range(len(buf)):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            c = x >> 16 & 0xFF
            buf[i] = (0x2F, 0x21, 0x0D, 0x0A, 0x31, 0x28, 0x29, c)[c & 7] if c & 8 else c
        r.feed(buf)
    r.close()
    assert r.fragments and r.malformed and r.crc_errors and not r.telegrams
    assert r.feed(V5[:200]) == 0 and r.feed(V5[200:]) == 0  # too long for this reader
    r = p1.P1Reader()
    assert r.feed(buf) >= 0 and r.feed(V5) == 1  # and it finds the next telegram


def test_crcless_needs_a_data_line():
    r = p1.P1Reader()
    assert r.feed(b"/ISk5\\2MT382-1000\r\n\r\n!\r\n") == 0 and r.malformed == 1


def test_no_allocation_while_bytes_stream_in():
    r = p1.P1Reader()
    body = bytearray(V5[:-8])  # everything but the end of the telegram
    idle = bytearray(b"x" * 500)
    r.feed(V5)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    r.feed(idle)
    for i in range(0, len(body), 16):
        r.feed(body, 0)  # an empty poll
    r.feed(body)
    after = gc.mem_alloc()
    gc.enable()
    assert after == before, after - before


import mptest
mptest.run(globals())
