"""Tessera sw_driver package."""
