"""Measuring what runs here: the train step (bench), the input pipeline (bench_input), what each
strategy sends (comms), and the measured runs a calibration is fitted to."""
