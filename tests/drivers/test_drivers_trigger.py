"""Serial trigger box: line protocol, and the real pyserial driver against the simulated firmware
running behind a real pseudo-terminal."""

from __future__ import annotations

import doctest
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmicro_hw.config import RigConfig, TriggerDeviceConfig
from dmicro_hw.drivers import trigger_protocol as tp
from dmicro_hw.drivers.base import open_device
from dmicro_hw.drivers.serial_trigger import SerialTrigger
from dmicro_hw.errors import ConfigError, DeviceError, DeviceTimeoutError
from dmicro_hw.simulators.sim_trigger import SimSerialTrigger, TriggerFirmware

# ------------------------------------------------------------------------------ protocol


def test_checksum_is_nmea_xor() -> None:
    # a published NMEA sentence: $GPGGA,...*76 (checksum over the text between $ and *)
    body = "GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,"
    assert tp.checksum(body) == "76"


def test_protocol_docstring_examples() -> None:
    assert doctest.testmod(tp).failed == 0


printable = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="*"),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(body=printable, pos=st.integers(0, 200), new=st.integers(32, 126))
def test_any_single_byte_corruption_is_detected(body: str, pos: int, new: int) -> None:
    line = tp.encode(body)
    assert tp.decode(line) == body
    i = pos % len(body)
    if new == ord(body[i]) or new == ord("*"):
        return
    bad = bytearray(line)
    bad[i] = new
    with pytest.raises(tp.ProtocolError):
        tp.decode(bytes(bad))


def test_parse_request_and_reply() -> None:
    req = tp.parse_request(tp.decode(tp.encode("12 arm 100.0 5")))
    assert (req.seq, req.verb, req.args) == (12, "ARM", ["100.0", "5"])
    rep = tp.parse_reply("12 OK armed=1 fired=3")
    assert rep.ok and rep.fields == {"armed": "1", "fired": "3"}
    err = tp.parse_reply("? ERR BADCS")
    assert err.seq is None and not err.ok and err.code == "BADCS"
    with pytest.raises(tp.ProtocolError):
        tp.decode(b"no checksum here\n")
    with pytest.raises(tp.ProtocolError):
        tp.parse_reply("12 MAYBE")


# ------------------------------------------------------------------------------ over a real pty


@pytest.fixture
def firmware():
    fw = TriggerFirmware().start()
    yield fw
    fw.close()


def wait_for(pred, timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def test_arm_fire_status_disarm_over_pty(firmware: TriggerFirmware) -> None:
    assert firmware.port.startswith("/dev/")
    pulses: list[tuple[int, float]] = []
    lock = threading.Lock()

    def on_pulse(i: int, t: float) -> None:
        with lock:
            pulses.append((i, t))

    firmware.on_pulse(on_pulse)
    with SerialTrigger(firmware.port, timeout_s=1.0) as trig:
        assert trig.identity["name"] == "dmicro-trigger-sim"
        trig.arm(2000.0, 40)
        st0 = trig.status()
        assert st0["armed"] and not st0["running"] and st0["remaining"] == 40
        assert st0["rate_hz"] == 2000.0 and st0["count"] == 40
        trig.fire()
        assert wait_for(lambda: not trig.status()["running"])
        st1 = trig.status()
        assert st1["fired"] == 40 and st1["remaining"] == 0 and not st1["armed"]
        with lock:
            assert [i for i, _ in pulses] == list(range(40))
            times = [t for _, t in pulses]
        assert times == sorted(times)
        assert times[-1] - times[0] == pytest.approx(39 / 2000.0, rel=1e-6)  # scheduled times

        trig.arm(500.0, 0)  # continuous until disarm
        trig.fire()
        assert wait_for(lambda: trig.status()["fired"] >= 3)
        assert trig.status()["remaining"] == -1
        trig.disarm()
        st2 = trig.status()
        assert not st2["armed"] and not st2["running"]
        fired = st2["fired"]
        time.sleep(0.03)
        assert trig.status()["fired"] == fired  # no pulses after disarm


def test_refusals_are_device_errors(firmware: TriggerFirmware) -> None:
    with SerialTrigger(firmware.port, timeout_s=1.0) as trig:
        with pytest.raises(DeviceError, match="FIRE refused: NOTARMED"):
            trig.fire()
        with pytest.raises(DeviceError, match="rate_hz > 0"):
            trig.arm(0.0, 5)
        with pytest.raises(DeviceError, match="BADARG"):
            trig._request("ARM", "1e9", "5")  # above the box's max rate: the box refuses


def test_garbled_replies_are_detected_and_retried_without_double_firing() -> None:
    with TriggerFirmware(garble_probability=0.4, seed=3) as fw:
        pulses: list[int] = []
        fw.on_pulse(lambda i, t: pulses.append(i))
        with SerialTrigger(fw.port, timeout_s=0.5, retries=8) as trig:
            for _ in range(5):
                trig.arm(5000.0, 25)
                trig.fire()
                assert wait_for(lambda: not fw.state()["running"])
            status = trig.status()
        assert trig.stats["garbled"] > 0 and fw.stats["garbled_out"] == trig.stats["garbled"]
        assert fw.stats["replayed"] > 0  # retries were answered from the reply cache
        assert status["fired"] == 25
        assert len(pulses) == 5 * 25  # each FIRE executed exactly once despite retries


def test_always_garbled_gives_device_error_after_bounded_retries() -> None:
    with TriggerFirmware(garble_probability=1.0) as fw:
        trig = SerialTrigger(fw.port, timeout_s=0.5, retries=2, handshake=False)
        trig.open()
        with pytest.raises(DeviceError, match=r"garbled") as ei:
            trig.status()
        assert not isinstance(ei.value, DeviceTimeoutError)
        assert fw.port in str(ei.value) and "3 tries" in str(ei.value)
        fw.garble_probability = 0.0
        trig.close()
    assert not fw.state()["armed"]


def test_timeout_when_firmware_is_stopped_names_the_port(firmware: TriggerFirmware) -> None:
    trig = SerialTrigger(firmware.port, timeout_s=0.15, retries=1)
    trig.open()
    firmware.stop()  # box hangs: port still there, nobody answers
    with pytest.raises(DeviceTimeoutError, match=firmware.port) as ei:
        trig.status()
    assert "STATUS" in str(ei.value) and "2 tries" in str(ei.value)
    assert trig.stats["reconnects"] >= 1
    firmware.start()  # box back: the same driver recovers
    assert trig.status()["armed"] is False
    trig.close()
    trig.close()  # idempotent


def test_reconnects_after_port_failure(firmware: TriggerFirmware) -> None:
    with SerialTrigger(firmware.port, timeout_s=0.5) as trig:
        trig.arm(100.0, 3)
        trig._ser.close()  # the adapter dropped out under the driver
        assert trig.status()["armed"] is True
        assert trig.stats["reconnects"] == 1


def test_bad_port_is_device_error() -> None:
    with pytest.raises(DeviceError, match="/dev/does-not-exist"):
        SerialTrigger("/dev/does-not-exist", timeout_s=0.2).open()


def test_port_vanishing_is_device_error(firmware: TriggerFirmware) -> None:
    trig = SerialTrigger(firmware.port, timeout_s=0.15, retries=1).open()
    port = firmware.port
    firmware.close()
    with pytest.raises(DeviceError, match=port):
        trig.status()
    trig.close()


def test_close_disarms_also_after_exception(firmware: TriggerFirmware) -> None:
    with pytest.raises(RuntimeError):
        with SerialTrigger(firmware.port) as trig:
            trig.arm(1000.0, 0)
            trig.fire()
            assert wait_for(lambda: firmware.state()["running"])
            raise RuntimeError("operator error mid-run")
    state = firmware.state()
    assert not state["armed"] and not state["running"]
    with pytest.raises(DeviceError, match="after close"):
        trig.status()


def test_registry_sim_backend_with_garbling_from_faults() -> None:
    rig = RigConfig.model_validate(
        {
            "trigger": {"backend": "sim", "timeout_s": 0.5, "options": {"retries": 10}},
            "bench": {"faults": {"garble_probability": 0.2, "seed": 1}},
        }
    )
    trig = open_device("trigger", rig.trigger, rig)
    assert isinstance(trig, SimSerialTrigger)
    seen: list[int] = []
    trig.on_pulse(lambda i, t: seen.append(i))
    with trig:
        trig.arm(4000.0, 10)
        trig.fire()
        assert wait_for(lambda: len(seen) == 10)
        for _ in range(20):
            trig.status()
    assert trig.firmware.stats["garbled_out"] > 0
    assert not trig.firmware.running  # close() shut the firmware down


def test_serial_backend_config_errors() -> None:
    with pytest.raises(ConfigError, match="trigger.port"):
        open_device("trigger", TriggerDeviceConfig(backend="serial"))
    with pytest.raises(ConfigError, match="trigger.options"):
        open_device(
            "trigger", TriggerDeviceConfig(backend="serial", port="x", options={"tries": 1})
        )
    null = open_device("trigger", TriggerDeviceConfig(backend="none"))
    with null:
        null.arm(10, 1)
        assert null.status()["armed"]
