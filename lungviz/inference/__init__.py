"""Inference: a file to a chest image, routed to its task, classified and explained."""
