"""Emulated instruments: the software crossbar behind a real instrument's wire protocol, served on
TCP so that the real drivers (and third-party clients) talk to it unchanged.

- ``keithley2600``: a Keithley 2600B SMU (TSP, as its reference manual gives it) with a switch matrix;
- ``serial_board``: the home-made array-controller board of serial_board.md;
- ``faults``: the transport faults both inject (latency, lost and garbled replies, disconnects).

``python -m drivers.emulate serial|smu`` starts one.
"""
