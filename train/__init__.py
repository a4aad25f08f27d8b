"""ddrnet.train stage."""
