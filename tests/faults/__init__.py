"""Faults and hostile input on the real apiserver (DESIGN.md, "Tests and the real parts they use")."""
