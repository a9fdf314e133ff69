"""Tessera fpga package."""
