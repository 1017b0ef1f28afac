"""Nipype workflows and interfaces of the Neuroverse3D BIDS-App (installed as
``neuroverse_bids.workflows``)."""
