"""Privacy math: sensitivities, mechanisms, calibration, accounting. Pure code, no I/O."""
