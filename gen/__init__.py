"""Tessera gen package."""
