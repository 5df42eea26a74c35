"""Conveyor model toolchain: data loading, models, training, export, quantisation."""
