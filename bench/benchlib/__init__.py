"""The parts of bench/run.py: see each module."""
