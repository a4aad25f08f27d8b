"""ddrnet.export stage."""
