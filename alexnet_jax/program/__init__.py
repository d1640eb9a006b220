"""Reading a compiled train step: its collectives and ops (hlo), one analysis of a step (analysis),
the formulas it is held to (formula), and compiling, timing and memory of a step (measure).
Imports core only."""
