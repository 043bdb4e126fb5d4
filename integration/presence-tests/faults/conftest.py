"""The fault suite's own folder is its import root (harness.py); the python clients' folder holds
the reading of the wire contract they share (presence_wire.py)."""
import pathlib
import sys

here = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent / "python"))
sys.path.insert(0, str(here))
