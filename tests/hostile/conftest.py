from tests.hostile.harness import canary

__all__ = ["canary"]
