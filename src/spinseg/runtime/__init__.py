"""What running a model needs from the machine: devices, precision, seeds, processes (torchrun)."""
