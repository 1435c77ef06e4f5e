"""Parking sensor node: sample the magnetometer, detect, report on change plus heartbeat.

Runs on an ESP32 with a QMC5883L on I2C. Transport is CoAP (CON POST /p/r over UDP, Wi-Fi here;
an NB-IoT modem would carry the same datagrams) or the concentrator serial frame on a UART
radio module. Settings are the constants below; docs: firmware/README.md.
"""

import random
import socket
import struct
import time

import machine
import network
from micropython import const

import codec
import coap
import detector
import remote
from qmc5883l import QMC5883L

# --- settings -----------------------------------------------------------------------------------
TRANSPORT = "coap"  # "coap" or "uart"
WIFI_SSID = "citygate-parking"
WIFI_PASSWORD = "change-me"
COAP_HOST = "192.0.2.10"
COAP_PORT = const(5683)
UART_ID = const(1)
UART_BAUD = const(9600)
UART_TX = const(17)
UART_RX = const(16)
I2C_SCL = const(22)
I2C_SDA = const(21)
BATTERY_ADC_PIN = const(35)
BATTERY_DIVIDER = const(2)  # 1:1 divider in front of the ADC
TEMP_OFFSET_DC = const(250)  # QMC5883L temperature zero point, from calibration
TC_CENTI_MG_PER_C = (0, 0, 0)  # per-node magnetometer drift, from calibration
SAMPLE_PERIOD_MS = const(1000)
SLEEP_MODE = "light"  # "light" keeps RAM; "deep" only for periods of several seconds
DEFAULT_HEARTBEAT_S = const(1800)
WIFI_CONNECT_MS = const(8000)
MAX_PENDING = const(4)  # unsent reports kept for the next attempt (newest win)
WDT_TIMEOUT_MS = const(60000)
SETTINGS_FILE = "remote.bin"  # settings set by commands (flash: survives a power cut)

_RTC_MAGIC = b"CGP1"
_STATE = ">IHHIB"  # heartbeat_s, send_counter, park_counter, samples_since_report, occupied


def reset_cause() -> int:
    """machine.reset_cause() mapped to the wire enum."""
    cause = machine.reset_cause()
    table = {
        machine.PWRON_RESET: codec.RESET_POWER_ON,
        machine.HARD_RESET: codec.RESET_HARD,
        machine.WDT_RESET: codec.RESET_WATCHDOG,
        machine.DEEPSLEEP_RESET: codec.RESET_DEEP_SLEEP_WAKE,
        machine.SOFT_RESET: codec.RESET_SOFT,
    }
    return table.get(cause, codec.RESET_UNKNOWN)


class CoapLink:
    """Sends report bodies as CON POST /p/r and returns the heartbeat from the response; the
    whole response payload (with a command, if any) is kept in `reply`."""

    def __init__(self) -> None:
        self.wlan = network.WLAN(network.STA_IF)
        self.mid = random.getrandbits(16)
        self.rssi = codec.RSSI_UNKNOWN
        self.reply = b""

    def _connect(self) -> bool:
        self.wlan.active(True)
        if not self.wlan.isconnected():
            self.wlan.connect(WIFI_SSID, WIFI_PASSWORD)
            start = time.ticks_ms()
            while not self.wlan.isconnected():
                if time.ticks_diff(time.ticks_ms(), start) > WIFI_CONNECT_MS:
                    return False
                time.sleep_ms(100)
        self.rssi = self.wlan.status("rssi")
        return True

    def send(self, body: bytes) -> int:
        """Deliver one body; the heartbeat seconds from the reply (0 = none), -1 on failure."""
        self.reply = b""
        if not self._connect():
            self.wlan.active(False)
            return -1
        try:
            return self._exchange(body)
        finally:
            self.wlan.active(False)  # the radio is the battery's biggest consumer

    def _exchange(self, body: bytes) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        token = struct.pack(">I", random.getrandbits(32))
        request = coap.encode_post(self.mid, token, ("p", "r"), coap.CF_OCTET_STREAM, body)
        address = socket.getaddrinfo(COAP_HOST, COAP_PORT)[0][-1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for timeout_ms in coap.timeouts_ms(random.getrandbits(10) / 1024):
                sock.sendto(request, address)
                result = self._await_reply(sock, address, token, timeout_ms)
                if result != -2:
                    return result
            return -1
        finally:
            sock.close()

    def _await_reply(self, sock: socket.socket, address: tuple, token: bytes,
                     timeout_ms: int) -> int:
        """Heartbeat (>= 0) or -1 on rejection; -2 when it is time to retransmit."""
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        acked = False
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return -2 if not acked else -1
            sock.settimeout(left / 1000)
            try:
                data, _ = sock.recvfrom(256)
            except OSError:
                continue
            msg = coap.parse(data)
            if msg is None:
                continue
            mtype, code, mid, reply_token, payload = msg
            if mtype == coap.TYPE_RST and mid == self.mid:
                return -1
            if mtype == coap.TYPE_ACK and mid == self.mid and code == coap.CODE_EMPTY:
                acked = True  # separate response follows; stop retransmitting
                deadline = time.ticks_add(time.ticks_ms(), 4 * timeout_ms)
                continue
            if reply_token != token or code == coap.CODE_EMPTY:
                continue
            if mtype == coap.TYPE_CON:
                sock.sendto(coap.encode_empty_ack(mid), address)
            if code >> 5 != 2:  # not 2.xx
                return -1
            self.reply = payload
            return codec.decode_config(payload)


class UartLink:
    """Writes concentrator frames to a UART radio module; no reply on this path."""

    def __init__(self) -> None:
        self.uart = machine.UART(UART_ID, baudrate=UART_BAUD, tx=UART_TX, rx=UART_RX)
        self.rssi = codec.RSSI_UNKNOWN
        self.reply = b""  # commands need the CoAP reply; none arrive on this path

    def send(self, body: bytes) -> int:
        """Write one frame; 0 = delivered to the module, no config."""
        self.uart.write(codec.encode_frame(body))
        return 0


class Node:
    """The device loop and its persistent counters."""

    def __init__(self) -> None:
        i2c = machine.I2C(0, scl=machine.Pin(I2C_SCL), sda=machine.Pin(I2C_SDA), freq=400000)
        self.sensor = QMC5883L(i2c, TEMP_OFFSET_DC)
        adc = machine.ADC(machine.Pin(BATTERY_ADC_PIN))
        adc.atten(machine.ADC.ATTN_11DB)
        self.adc = adc
        self.rtc = machine.RTC()
        self.link: CoapLink | UartLink = CoapLink() if TRANSPORT == "coap" else UartLink()
        self.detector = detector.Detector(tc_centi_mg_per_c=TC_CENTI_MG_PER_C)
        self.sensor_id = struct.unpack(">I", machine.unique_id()[-4:])[0]
        self.remote = remote.Remote(self.detector, DEFAULT_HEARTBEAT_S)
        self.send_counter = 0
        self.park_counter = 0
        self.samples_since_report = 0
        self.pending: list = []
        self.last_sample = (0, 0, 0, codec.TEMPERATURE_UNKNOWN)

    def restore(self) -> bool:
        """Reload counters and detector state kept in RTC memory across deep sleep."""
        data = self.rtc.memory()
        size = struct.calcsize(_STATE)
        if data[:4] != _RTC_MAGIC or len(data) < 4 + size:
            return False
        hb, send, park, since, _ = struct.unpack_from(_STATE, data, 4)
        if not self.detector.restore(data[4 + size :]):
            return False
        self.remote.bus_heartbeat(hb)
        self.send_counter, self.park_counter = send, park
        self.samples_since_report = since
        return True

    def save(self) -> None:
        """Keep counters and detector state in RTC memory (survives deep sleep, not power loss)."""
        state = struct.pack(_STATE, self.remote.heartbeat_s, self.send_counter,
                            self.park_counter,
                            self.samples_since_report, 1 if self.detector.occupied else 0)
        self.rtc.memory(_RTC_MAGIC + state + self.detector.snapshot())

    def load_settings(self) -> None:
        """Settings a command set before a restart (before the detector state is restored)."""
        try:
            with open(SETTINGS_FILE, "rb") as f:
                self.remote.restore(f.read())
        except OSError:
            pass  # none yet: the defaults above

    def save_settings(self) -> None:
        """Keep the settings and the last command's tag and result in flash."""
        try:
            with open(SETTINGS_FILE, "wb") as f:
                f.write(self.remote.snapshot())
        except OSError:
            pass  # still applied; lost only at the next power cut

    def battery_mv(self) -> int:
        """Battery voltage in mV through the divider."""
        return self.adc.read_uv() * BATTERY_DIVIDER // 1000

    def queue(self, msg_type: int, occupied: bool, cause: int = codec.RESET_UNKNOWN) -> None:
        """Build a report from the latest sample and queue it for sending."""
        x, y, z, temp_dc = self.last_sample
        self.send_counter = (self.send_counter + 1) & 0xFFFF
        body = codec.encode_body(
            self.sensor_id, msg_type, occupied, (x, y, z), self.detector.baseline(),
            self.battery_mv(), self.link.rssi, temp_dc, self.send_counter, self.park_counter,
            cause,
        )
        self.pending.append(body)
        if len(self.pending) > MAX_PENDING:
            self.pending.pop(0)
        self.samples_since_report = 0

    def flush(self) -> None:
        """Send queued reports oldest first (the ack of the last command after the first one);
        keep the rest when the link fails. A command in a reply is applied at once."""
        while self.pending:
            heartbeat = self.link.send(self.pending[0] + self.remote.ack)
            if heartbeat < 0:
                return
            self.pending.pop(0)
            self.remote.ack = b""  # delivered with this report
            self.remote.bus_heartbeat(heartbeat)
            if self.remote.handle(self.link.reply, self.last_sample):
                self.save_settings()

    def step(self) -> None:
        """One sample: detect, report changes and heartbeats."""
        sample = self.sensor.read()
        if sample is not None:
            self.last_sample = (sample[0], sample[1], sample[2], sample[3])
            event = self.detector.update(sample[0], sample[1], sample[2], sample[3])
            if event in (detector.EVENT_LEAVE, detector.EVENT_SWAP):
                self.queue(codec.MSG_OCCUPANCY_CHANGE, False)
            if event in (detector.EVENT_ARRIVE, detector.EVENT_SWAP):
                self.park_counter = (self.park_counter + 1) & 0xFFFF
                self.queue(codec.MSG_OCCUPANCY_CHANGE, True)
        self.samples_since_report += 1
        if self.samples_since_report * SAMPLE_PERIOD_MS >= self.remote.heartbeat_s * 1000:
            self.queue(codec.MSG_HEARTBEAT, self.detector.occupied)
        if self.pending:
            self.flush()

    def run(self) -> None:
        """Sample forever, sleeping between samples."""
        cause = reset_cause()
        self.load_settings()
        self.sensor.start()
        # RTC memory survives deep sleep, watchdog and soft resets: keep the occupancy state
        # and baseline then. After power-on the bay is assumed empty (install procedure).
        resumed = cause != codec.RESET_POWER_ON and self.restore()
        wdt = machine.WDT(timeout=WDT_TIMEOUT_MS)
        if cause != codec.RESET_DEEP_SLEEP_WAKE:
            time.sleep_ms(50)
            first = self.sensor.read()
            if first is not None:
                self.last_sample = (first[0], first[1], first[2], first[3])
                if not resumed:
                    self.detector.calibrate(first[0], first[1], first[2], first[3])
            self.queue(codec.MSG_STARTUP, self.detector.occupied, cause)
        while True:
            self.step()
            self.save()
            wdt.feed()
            if SLEEP_MODE == "deep":
                machine.deepsleep(SAMPLE_PERIOD_MS)
            machine.lightsleep(SAMPLE_PERIOD_MS)


Node().run()
