"""ddrnet.compress stage."""
