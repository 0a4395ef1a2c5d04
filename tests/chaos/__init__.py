"""Chaos tests: kill -9 campaigns, fuzzing, misbehaving jobs, full disks (docs/guarantees.md)."""
