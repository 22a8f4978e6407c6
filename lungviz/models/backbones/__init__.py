"""Pretrained image backbones built in plain Keras, with weights converted without their original framework."""
