"""DSMR 5 P1 telegrams for emulated meters, with their CRC-16/ARC."""

from __future__ import annotations

import time


def crc16(data: bytes) -> int:
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def telegram(import_t1: float, import_t2: float, power_kw: float, gas_m3: float,
             volts: float = 230.0, export_t1: float = 0.0, export_t2: float = 0.0) -> bytes:
    ts = time.strftime("%y%m%d%H%M%S", time.localtime())
    amps = round(power_kw * 1000 / volts)
    body = (
        "/ISk5\\2MT382-1000\r\n\r\n"
        "1-3:0.2.8(50)\r\n"
        f"0-0:1.0.0({ts}W)\r\n"
        "0-0:96.1.1(4B384547303034303436333935353037)\r\n"
        f"1-0:1.8.1({import_t1:010.3f}*kWh)\r\n"
        f"1-0:1.8.2({import_t2:010.3f}*kWh)\r\n"
        f"1-0:2.8.1({export_t1:010.3f}*kWh)\r\n"
        f"1-0:2.8.2({export_t2:010.3f}*kWh)\r\n"
        "0-0:96.14.0(0002)\r\n"
        f"1-0:1.7.0({power_kw:06.3f}*kW)\r\n"
        "1-0:2.7.0(00.000*kW)\r\n"
        f"1-0:32.7.0({volts:05.1f}*V)\r\n"
        f"1-0:31.7.0({amps:03d}*A)\r\n"
        "0-1:24.1.0(003)\r\n"
        "0-1:96.1.0(3232323241424344313233343536373839)\r\n"
        f"0-1:24.2.1({ts}W)({gas_m3:09.3f}*m3)\r\n"
        "!"
    ).encode()
    return body + f"{crc16(body):04X}\r\n".encode()
