"""The one `sensorcity` command. Each subcommand is a thin layer over a plain function; a
FatalError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from .errors import FatalError


def _gateway_config(a):
    from .gateway import config as gwconfig
    path = a.config or (gwconfig.DEFAULT_PATH if gwconfig.DEFAULT_PATH.exists() else None)
    return gwconfig.load(path, listen=getattr(a, "listen", None),
                         serial=getattr(a, "serial", None), brokers=getattr(a, "broker", None),
                         spool=getattr(a, "spool", None), nodes=getattr(a, "nodes", None),
                         gateway_id=getattr(a, "gateway_id", None),
                         metrics=getattr(a, "metrics", None))


def _gateway_run(a):
    import os
    from .gateway.service import Gateway
    cfg = _gateway_config(a)
    # the journal stamps each line itself
    fmt = "%(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt)
    asyncio.run(Gateway(cfg).run(handle_signals=True))


def _gateway_check(a):
    from .gateway import config as gwconfig
    from .gateway.registry import Registry
    from .gateway.uplink import tls_context
    cfg = gwconfig.load(a.config or gwconfig.DEFAULT_PATH)
    reg = Registry.load(cfg.nodes)
    brokers = cfg.broker_list()
    if any(b.tls for b in brokers):
        tls_context(cfg)  # the CA, certificate and key load, and the key fits the certificate
    shown = ", ".join(f"{'mqtts' if b.tls else 'mqtt'}://{b.host}:{b.port}" for b in brokers)
    print(f"config ok: gateway {cfg.gateway_id}, {len(cfg.listen)} TCP listeners, "
          f"{len(cfg.serial)} serial patterns, {len(reg.nodes)} nodes, brokers {shown}, "
          f"metrics {cfg.metrics or 'off'}")


def _provision(a):
    from .tools.provision import provision
    cfg = provision(a.node_id, a.sensor, Path(a.registry), Path(a.out), interval=a.interval,
                    base_name=a.base_name, mac=a.mac, calibration_db=a.calibration,
                    board=a.board)
    print(f"provisioned {cfg['node_id']} ({cfg['sensor']}, {cfg['base_name']}): "
          f"config {a.out}, registry {a.registry}")


def _emulate(a):
    from .tools.emulate import EmulatedNode
    if a.target != "unix":
        raise FatalError("--target qemu is not available yet: use --target unix")
    if a.speed <= 0:
        raise FatalError(f"--speed {a.speed}: give a factor above 0")
    node = EmulatedNode(Path(a.config), a.port, interval=a.interval, heap=a.heap,
                        log=sys.stderr, speed=1 if a.realtime else a.speed)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    node.start()
    print(f"emulating {node.node['node_id']} ({node.node['sensor']}) on {a.port}; Ctrl-C stops",
          file=sys.stderr)
    try:
        node.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()


def _decode(a):
    from .tools.decode import decode_stream, dumps
    data = sys.stdin.buffer.read() if a.file in (None, "-") else Path(a.file).read_bytes()
    key_for = lambda node: None  # noqa: E731
    if a.nodes:
        from .gateway.registry import Registry
        key_for = Registry.load(a.nodes).key_for
    for obj in decode_stream(data, key_for):
        print(dumps(obj))


def _replay(a):
    import json as _json
    from .tools.replay import replay
    source = getattr(a, {"noise": "wav", "energy": "p1", "traffic": "edges"}[a.kind])
    for rec in replay(a.kind, Path(source), interval=a.interval, board=a.board, heap=a.heap,
                      target=a.target, mic=getattr(a, "mic", None),
                      mic_sensitivity=getattr(a, "mic_sensitivity", None),
                      loop_length=getattr(a, "loop_length", 2.0),
                      loop_spacing=getattr(a, "loop_spacing", 4.0),
                      lanes=getattr(a, "lanes", None)):
        if "counters" in rec:
            print("replay: " + " ".join(f"{k}={v}" for k, v in rec["counters"].items()),
                  file=sys.stderr)
        else:
            print(_json.dumps({"n": rec["n"], "u": rec.get("u"), "v": rec["v"], "t": rec["t"]}))


def _demo(a):
    from .tools.demo import run_demo
    asyncio.run(run_demo(a.nodes, a.seconds, a.broker, a.interval))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sensorcity", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="emulated nodes -> gateway -> MQTT broker, live")
    d.add_argument("--nodes", type=int, default=3)
    d.add_argument("--seconds", type=float, default=30)
    d.add_argument("--broker", help="mqtt://HOST:PORT (default: an embedded broker)")
    d.add_argument("--interval", type=int, default=2, help="node interval in seconds")
    d.set_defaults(func=_demo)

    g = sub.add_parser("gateway", help="the gateway service")
    gsub = g.add_subparsers(dest="gw_command", required=True)
    gr = gsub.add_parser("run", help="run the gateway")
    gr.add_argument("--config", help="TOML file (default /etc/sensorcity/gateway.toml)")
    gr.add_argument("--listen", action="append", help="tcp://HOST:PORT, repeatable")
    gr.add_argument("--serial", action="append",
                    help="serial device or glob (watched for hot-plug), repeatable")
    gr.add_argument("--broker", action="append", help="mqtt[s]://HOST:PORT, repeatable (failover)")
    gr.add_argument("--spool", help="spool directory")
    gr.add_argument("--nodes", help="node registry written by `sensorcity provision`")
    gr.add_argument("--gateway-id", help="id in the MQTT topics (default: host name)")
    gr.add_argument("--metrics", help="HOST:PORT of /metrics and /healthz (\"\" turns it off)")
    gr.set_defaults(func=_gateway_run)
    gc = gsub.add_parser("check-config", help="check a gateway config and say what it holds")
    gc.add_argument("--config")
    gc.set_defaults(func=_gateway_check)

    pr = sub.add_parser("provision", help="a new node: key, config, registry entry")
    pr.add_argument("--node-id", required=True)
    pr.add_argument("--sensor", required=True, choices=["noise", "energy", "traffic"])
    pr.add_argument("--registry", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--interval", type=int, default=60)
    pr.add_argument("--base-name", help="SenML base name (default: an RFC 9039 URN)")
    pr.add_argument("--mac", help="the board's MAC, for a urn:dev:mac base name")
    pr.add_argument("--calibration", type=float, default=0.0, help="noise offset in dB")
    pr.add_argument("--board", default="esp32-devkitc")
    pr.set_defaults(func=_provision)

    em = sub.add_parser("emulate", help="run a node's firmware on the emulated board")
    em.add_argument("--config", required=True)
    em.add_argument("--port", required=True, help="serial device or tcp://HOST:PORT")
    em.add_argument("--interval", type=int)
    em.add_argument("--realtime", action="store_true",
                    help="the board's clock at wall-clock rate, as is the default (overrides "
                         "--speed; see docs/node.md)")
    em.add_argument("--speed", type=float, default=1.0,
                    help="the board's clock runs this many times faster than the wall clock "
                         "(a simulated day in 24 h / SPEED; see docs/node.md)")
    em.add_argument("--target", choices=["unix", "qemu"], default="unix")
    em.add_argument("--heap", default="128k",
                    help="emulated heap (default 128k: the 64-bit unix port's objects are about "
                         "twice an ESP32's, see docs/emulation.md)")
    em.set_defaults(func=_emulate)

    rp = sub.add_parser("replay", help="a recording through the real firmware; JSON lines out")
    rsub = rp.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--board", default="esp32-devkitc")
    common.add_argument("--interval", type=int, default=60, help="seconds (default 60)")
    common.add_argument("--heap", default="64k", help="emulated heap (default 64k)")
    common.add_argument("--target", choices=["unix", "qemu"], default="unix")
    rn = rsub.add_parser("noise", parents=[common], help="a WAV of the microphone's raw output")
    rn.add_argument("--wav", required=True)
    rn.add_argument("--mic", help="microphone model for its equalisation, or 'ideal' (flat)")
    rn.add_argument("--mic-sensitivity", type=float, help="dBFS at 94 dB SPL (default: board's)")
    re_ = rsub.add_parser("energy", parents=[common], help="a P1 byte stream")
    re_.add_argument("--p1", required=True)
    rt = rsub.add_parser("traffic", parents=[common], help="a loop-edge CSV t,lane,loop,state")
    rt.add_argument("--edges", required=True)
    rt.add_argument("--loop-length", type=float, default=2.0, help="metres (default 2.0)")
    rt.add_argument("--loop-spacing", type=float, default=4.0,
                    help="metres between the loops' leading edges (default 4.0)")
    rt.add_argument("--lanes", type=int, help="default: the highest lane in the file")
    for kind_parser in (rn, re_, rt):
        kind_parser.set_defaults(func=_replay)

    de = sub.add_parser("decode", help="link frames or SenML-CBOR batches to JSON lines")
    de.add_argument("file", nargs="?")
    de.add_argument("--nodes", help="registry, to check tags")
    de.set_defaults(func=_decode)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FatalError as exc:
        print(f"sensorcity: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
