"""Simulators and throwaway real services for ``gridmate demo`` and the test suite."""
