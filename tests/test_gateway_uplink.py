"""The uplink's replay window: the batches acked in the last replay_window seconds before the
latest ack, and never more than REPLAY_MAX frames, are what a lost connection re-sends."""

from sensorcity.gateway import uplink
from sensorcity.gateway.config import Config
from sensorcity.gateway.spool import Spool


def make(tmp_path, **kw):
    (tmp_path / "none.json").write_text("")  # an empty registry: allowed (and warned)
    cfg = Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"], spool=str(tmp_path / "s"),
                 nodes=str(tmp_path / "none.json"), metrics="", **kw)
    return uplink.Uplink(Spool(cfg.spool), cfg)


def test_the_replay_window_is_bounded_by_age_and_by_frames(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(uplink.time, "monotonic", lambda: now[0])
    up = make(tmp_path, replay_window=10.0)
    for i in range(30):                        # one batch of 200 frames a second
        now[0] = 1000.0 + i
        up._remember(b"x", f"gw:{i}", 200)
    assert [b for _, _, b, _ in up.recent] == [f"gw:{i}" for i in range(19, 30)]
    assert up.recent_frames == 11 * 200
    up = make(tmp_path, replay_window=3600.0)
    for i in range(300):
        now[0] = 2000.0 + i
        up._remember(b"x", f"gw:{i}", 200)
    assert up.recent_frames == uplink.REPLAY_MAX and len(up.recent) == uplink.REPLAY_MAX // 200
    assert up.recent[-1][2] == "gw:299"        # the newest are kept
