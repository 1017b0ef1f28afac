"""Training and evaluation data from real anatomy that installs offline.

``sources``: MNI152 2009a (nilearn) and Colin27/AAL (Debian mricron-data) on the model grid;
``synth``: random deformations and SynthSeg-style images; ``dataset``: NIfTI files + manifest;
``cli``: ``neuroverse3d-make-training-data``.
"""
