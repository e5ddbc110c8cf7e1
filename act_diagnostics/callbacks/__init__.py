"""Thin Lightning callbacks: one class per Lightning flavour over the shared :mod:`._core`."""
