"""Training and evaluation: data sets, the training recipe, calibration fitting, metrics, the gate's fitting."""
