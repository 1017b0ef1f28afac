"""Neuroverse3D BIDS-App: 3D in-context learning for neuroimaging."""
__version__ = "0.1.0"
