"""Tests of velollmd/engine/ (mirrors the package)."""
