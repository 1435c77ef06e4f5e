"""Modbus register maps: sans-IO codec and read planner."""
