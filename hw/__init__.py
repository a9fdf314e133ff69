"""Tessera hw package."""
