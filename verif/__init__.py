"""Tessera verif package."""
