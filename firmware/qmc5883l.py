"""QMC5883L 3-axis magnetometer over I2C (register map from the QST datasheet)."""

import struct

from machine import I2C

ADDRESS = 0x0D
_REG_DATA = 0x00  # X, Y, Z little-endian i16, then status, then temperature
_REG_CONTROL1 = 0x09
_REG_CONTROL2 = 0x0A
_REG_SET_RESET = 0x0B
_STATUS_DRDY = 0x01
_STATUS_OVERFLOW = 0x02
# OSR 512, range +-2 G, 10 Hz, continuous: the lowest noise setting; at +-2 G one LSB is
# 1/12 mG, so values are converted with // 12.
_CONTROL1_CONTINUOUS = 0x01
_CONTROL1_STANDBY = 0x00
_LSB_PER_MG = 12
_TEMP_LSB_PER_DECI_C = 10  # 100 LSB per degC; the zero point is not calibrated by QST


class QMC5883L:
    """Reads field in mG and relative temperature in 0.1 degC; `temp_offset_dc` anchors it."""

    def __init__(self, i2c: I2C, temp_offset_dc: int = 0, address: int = ADDRESS) -> None:
        self.i2c = i2c
        self.address = address
        self.temp_offset_dc = temp_offset_dc

    def start(self) -> None:
        """Soft-reset the chip and start continuous measurement."""
        self.i2c.writeto_mem(self.address, _REG_CONTROL2, b"\x80")
        self.i2c.writeto_mem(self.address, _REG_SET_RESET, b"\x01")
        self.i2c.writeto_mem(self.address, _REG_CONTROL1, bytes([_CONTROL1_CONTINUOUS]))

    def standby(self) -> None:
        """Stop measuring (a few uA) until start() is called again."""
        self.i2c.writeto_mem(self.address, _REG_CONTROL1, bytes([_CONTROL1_STANDBY]))

    def read(self) -> tuple | None:
        """(x_mg, y_mg, z_mg, temp_dc), or None when no fresh sample or the field overflowed."""
        raw = self.i2c.readfrom_mem(self.address, _REG_DATA, 9)
        x, y, z, status, temp = struct.unpack("<hhhBh", raw)
        if not status & _STATUS_DRDY or status & _STATUS_OVERFLOW:
            return None
        return (
            x // _LSB_PER_MG,
            y // _LSB_PER_MG,
            z // _LSB_PER_MG,
            temp // _TEMP_LSB_PER_DECI_C + self.temp_offset_dc,
        )
