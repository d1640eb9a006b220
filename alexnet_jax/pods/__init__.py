"""Predicting machines this one lacks: hardware profiles (targets), compiling for them, the cost
model, the plan, the published runs and their replay, calibration. Imports program and core,
never the data layer."""
