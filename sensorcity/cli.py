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
from .kinds import KINDS


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
    cfg.check_spool()
    reg = Registry.load(cfg.nodes)
    brokers = cfg.broker_list()
    if any(b.tls for b in brokers):
        tls_context(cfg)  # the CA, certificate and key load, and the key fits the certificate
    if not reg.nodes:
        print(f"sensorcity: warning: node registry {cfg.nodes} holds no nodes: every frame "
              f"will be rejected", file=sys.stderr)
    shown = ", ".join(f"{'mqtts' if b.tls else 'mqtt'}://{b.host}:{b.port}" for b in brokers)
    password = f", password from {cfg.password_file}" if cfg.password_file else ""
    print(f"config ok: gateway {cfg.gateway_id}, {len(cfg.listen)} TCP listeners, "
          f"{len(cfg.serial)} serial patterns, {len(reg.nodes)} nodes, brokers {shown}"
          f"{password}, metrics {cfg.metrics or 'off'}, status page {_page_rule(cfg)}")


def _page_rule(cfg) -> str:
    """Who may see the status page (gateway/health.py); never the token itself."""
    from .gateway.config import is_loopback
    if not cfg.metrics:
        return "off"
    if is_loopback(cfg.metrics.rpartition(":")[0]):
        return "on loopback"
    return "with its token" if cfg.page_token else "off (no page_token)"


def _provision(a):
    from .tools.bench.provision import parse_location, provision
    cfg = provision(a.node_id, a.sensor, Path(a.registry), Path(a.out), interval=a.interval,
                    base_name=a.base_name, mac=a.mac, calibration_db=a.calibration,
                    board=a.board, p1_key=a.p1_key, p1_auth_key=a.p1_auth_key,
                    location=parse_location(a.location) if a.location else None)
    print(f"provisioned {cfg['node_id']} ({cfg['sensor']}, {cfg['base_name']}): "
          f"config {a.out}, registry {a.registry}")


def _emulate(a):
    from .tools.sim.emulate import EmulatedNode
    if a.speed <= 0:
        raise FatalError(f"--speed {a.speed}: give a factor above 0")
    if a.target == "qemu":
        from .tools.sim.qemu import QemuNode
        node = QemuNode(Path(a.config), a.port, interval=a.interval, heap=a.heap or "64k",
                        log=sys.stderr, speed=1 if a.realtime else a.speed)
    else:
        node = EmulatedNode(Path(a.config), a.port, interval=a.interval, heap=a.heap or "192k",
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
    from .tools.bench.decode import decode_stream, dumps
    try:
        data = sys.stdin.buffer.read() if a.file in (None, "-") else Path(a.file).read_bytes()
    except OSError as exc:
        raise FatalError(f"decode {a.file}: {exc.strerror or exc}") from exc
    key_for = lambda node: None  # noqa: E731
    if a.nodes:
        from .gateway.registry import Registry
        key_for = Registry.load(a.nodes).key_for
    bad = 0
    for obj in decode_stream(data, key_for):
        bad += "error" in obj
        print(dumps(obj))
    return 1 if bad else 0  # a frame that did not decode: its error line, and exit 1


def _replay(a):
    import json as _json
    from .tools.sim.replay import replay
    source = getattr(a, KINDS[a.kind].replay_flag)
    for rec in replay(a.kind, Path(source), interval=a.interval, board=a.board, heap=a.heap,
                      target=a.target, mic=getattr(a, "mic", None),
                      mic_sensitivity=getattr(a, "mic_sensitivity", None),
                      loop_length=getattr(a, "loop_length", 2.0),
                      loop_spacing=getattr(a, "loop_spacing", 4.0),
                      lanes=getattr(a, "lanes", None), p1_key=getattr(a, "p1_key", None),
                      p1_auth_key=getattr(a, "p1_auth_key", None)):
        if "counters" in rec:
            print("replay: " + " ".join(f"{k}={v}" for k, v in rec["counters"].items()),
                  file=sys.stderr)
        else:
            print(_json.dumps({"n": rec["n"], "u": rec.get("u"), "v": rec["v"], "t": rec["t"]}))


def _demo(a):
    from .tools.sim.demo import run_demo
    asyncio.run(run_demo(a.nodes, a.seconds, a.broker, a.interval))


def _flash(a):
    from .tools.bench import flash
    progress = flash.Progress(quiet=a.quiet)
    step = a.flash_step
    if step in (None, "firmware"):
        if not a.firmware:
            raise FatalError("give --firmware MICROPYTHON.bin (and --board, or --config)")
        board = a.board or (_node_board(a.config) if a.config else None)
        if not board:
            raise FatalError("give --board B (or --config NODE.json, which names it)")
        r = flash.flash_firmware(a.port, board, Path(a.firmware), progress, baud=a.baud)
        print(f"flashed {r['bytes']} bytes at {r['offset']:#x} on {r['chip']} ({r['mac']}), "
              f"verified; sha256 {r['sha256'][:16]}")
    if step in (None, "app"):
        if not a.config:
            raise FatalError("give --config NODE.json (written by `sensorcity provision`)")
        r = flash.flash_app(a.repl_port or a.port, Path(a.config), progress, wait=a.wait,
                            romfs=a.romfs)
        if r["romfs"]:
            rom = r["romfs"]
            print(f"romfs: {len(rom['modules'])} modules, {rom['bytes']} bytes, "
                  f"{'deployed' if rom['deployed'] else 'unchanged'}; "
                  f"{len(r['removed'])} left-over files removed")
        print(f"app for {r['arch']}: {len(r['written'])} files written, "
              f"{len(r['unchanged'])} unchanged, sha256 checked on the device")
    if step is None:
        hello = flash.wait_hello(a.repl_port or a.port, Path(a.config), timeout=a.wait + 20)
        print(f"node up: fw {hello.get('fw')}, boot {hello.get('boot')}, {hello.get('kind')}, "
              f"{hello.get('bn')}")


def _node_board(config):
    import json as _json
    try:
        return _json.loads(Path(config).read_text()).get("board")
    except (OSError, ValueError) as exc:
        raise FatalError(f"cannot read node config {config}: {exc}") from exc


def _monitor(a):
    from .tools.bench.monitor import keys_from, monitor
    counts = monitor(a.port, keys_from(a.config, a.registry), ack=a.ack, seconds=a.seconds)
    print(" ".join(f"{k}={v}" for k, v in counts.items()), file=sys.stderr)


def _calibrate(a):
    from .tools.bench.calibrate import calibrate
    r = calibrate(a.port, Path(a.config), a.reference, seconds=a.seconds, count=a.count)
    print(f"measured {r['measured']:.2f} dB for {r['reference']:.1f} dB: offset "
          f"{r['old']:+.2f} -> {r['new']:+.2f} dB, written to the node and {a.config}")


def _bench_parsers(sub) -> None:
    fl = sub.add_parser("flash", help="MicroPython (esptool) and the node app (mpremote) onto a "
                        "board; plain `flash` does both and waits for the node's hello")
    fl.add_argument("flash_step", nargs="?", choices=["firmware", "app"],
                    help="only this step (default: both, then wait for the hello)")
    fl.add_argument("--port", required=True, help="serial device, or socket://HOST:PORT")
    fl.add_argument("--repl-port", help="the console, when it is not --port (an ESP32-S3's "
                    "native USB while esptool uses its UART bridge)")
    fl.add_argument("--board", help="board id (default: the one NODE.json names)")
    fl.add_argument("--firmware", help="MicroPython image (.bin) for the board's chip")
    fl.add_argument("--config", help="NODE.json from `sensorcity provision`")
    fl.add_argument("--baud", type=int, default=460800, help="esptool's write speed")
    fl.add_argument("--wait", type=float, default=10.0,
                    help="seconds to wait for the REPL after a reset (default 10)")
    fl.add_argument("--romfs", action="store_true",
                    help="app: the compiled modules into the board's romfs partition, where they "
                    "run in place (off the heap; MicroPython >= 1.25 with a romfs partition)")
    fl.add_argument("--quiet", action="store_true", help="no progress bars")
    fl.set_defaults(func=_flash, extra="bench")

    mo = sub.add_parser("monitor", help="a node's link, decoded and verified, live")
    mo.add_argument("--port", required=True)
    mo.add_argument("--config", help="NODE.json (its key verifies the frames)")
    mo.add_argument("--registry", help="the gateway's registry, for any of its nodes")
    mo.add_argument("--ack", action="store_true",
                    help="act as the gateway: ack and send the time (acked data is not kept)")
    mo.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    mo.set_defaults(func=_monitor, extra="bench")

    ca = sub.add_parser("calibrate", help="set a noise node's offset from an acoustic "
                        "calibrator on its microphone")
    ca.add_argument("--port", required=True)
    ca.add_argument("--config", required=True, help="NODE.json; its offset is updated")
    ca.add_argument("--reference", type=float, default=94.0, help="calibrator level, dB SPL")
    ca.add_argument("--seconds", type=int, default=10, help="length of one measurement")
    ca.add_argument("--count", type=int, default=1, help="measurements averaged")
    ca.set_defaults(func=_calibrate, extra="bench")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sensorcity", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="emulated nodes -> gateway -> MQTT broker, live")
    d.add_argument("--nodes", type=int, default=3)
    d.add_argument("--seconds", type=float, default=30)
    d.add_argument("--broker", help="mqtt://HOST:PORT (default: an embedded broker)")
    d.add_argument("--interval", type=int, default=2, help="node interval in seconds")
    d.set_defaults(func=_demo, extra="sim")

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
    pr.add_argument("--sensor", required=True, choices=KINDS,
                    help="; ".join(f"{k.name}: {k.measures}" for k in KINDS.values()))
    pr.add_argument("--registry", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--interval", type=int, default=60)
    pr.add_argument("--base-name", help="SenML base name (default: an RFC 9039 URN)")
    pr.add_argument("--mac", help="the board's MAC, for a urn:dev:mac base name")
    pr.add_argument("--calibration", type=float, default=0.0, help="noise offset in dB")
    pr.add_argument("--board", default="esp32-devkitc", help="a board file's id (boards/)")
    pr.add_argument("--location", help="LAT,LON in WGS84 degrees")
    pr.add_argument("--p1-key", help="an encrypted meter's AES key from its grid operator "
                    "(32 hex digits; energy nodes; kept in node.json only)")
    pr.add_argument("--p1-auth-key", help="its authentication key (default: the Luxembourg "
                    "Smarty's published one)")
    pr.set_defaults(func=_provision, extra="bench")
    _bench_parsers(sub)

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
    em.add_argument("--heap",
                    help="emulated heap (default: 192k on the unix port, whose 64-bit objects "
                         "are about twice an ESP32's and whose bytecode is on the heap; 64k on "
                         "QEMU, an ESP32's budget; see docs/node.md, Heap)")
    em.set_defaults(func=_emulate, extra="sim")

    rp = sub.add_parser("replay", help="a recording through the real firmware; JSON lines out")
    rsub = rp.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--board", default="esp32-devkitc")
    common.add_argument("--interval", type=int, default=60, help="seconds (default 60)")
    common.add_argument("--heap", default="64k", help="emulated heap (default 64k)")
    common.add_argument("--target", choices=["unix", "qemu"], default="unix")
    parsers = {}
    for k in KINDS.values():
        parsers[k.name] = kp = rsub.add_parser(k.name, parents=[common], help=k.replay_input)
        kp.add_argument(f"--{k.replay_flag}", required=True, help=k.replay_input)
        kp.set_defaults(func=_replay, extra="sim")
    rn, rt = parsers["noise"], parsers["traffic"]
    rn.add_argument("--mic", help="microphone model for its equalisation, or 'ideal' (flat)")
    rn.add_argument("--mic-sensitivity", type=float, help="dBFS at 94 dB SPL (default: board's)")
    re_ = parsers["energy"]
    re_.add_argument("--p1-key", help="the meter's AES-128 key (32 hex digits): the stream is "
                     "encrypted DSMR (DLMS general-global-cipher frames, docs/energy.md)")
    re_.add_argument("--p1-auth-key", help="its authentication key (32 hex digits; default: "
                     "the Luxembourg Smarty's published one)")
    rt.add_argument("--loop-length", type=float, default=2.0, help="metres (default 2.0)")
    rt.add_argument("--loop-spacing", type=float, default=4.0,
                    help="metres between the loops' leading edges (default 4.0)")
    rt.add_argument("--lanes", type=int, help="default: the highest lane in the file")

    de = sub.add_parser("decode", help="link frames or SenML-CBOR batches to JSON lines")
    de.add_argument("file", nargs="?")
    de.add_argument("--nodes", help="registry, to check tags")
    de.set_defaults(func=_decode)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except FatalError as exc:
        print(f"sensorcity: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        # a gateway installs the core only; the bench and the simulation are extras
        extra = getattr(args, "extra", None)
        if extra is None or (exc.name or "sensorcity").split(".")[0] == "sensorcity":
            raise
        print(f"sensorcity {args.command}: {exc.name} is not installed: "
              f"pip install 'sensorcity[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
