"""Test doubles: stand-ins for what cannot run on these machines, each named
as one (a fake or a double) and saying what it does not prove."""
