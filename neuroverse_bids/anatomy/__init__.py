"""Synthetic subjects from real anatomy that installs offline.

``sources``: MNI152 2009a (nilearn) and Colin27/AAL (Debian mricron-data) on a grid;
``synth``: THE subject generator (random pose and smooth deformation, T1w or SynthSeg-style
images, bias, noise), used by the training data, the demo dataset (``neuroverse_bids.demo``)
and the tests' toy data; ``dataset``: NIfTI files + manifest; ``cli``:
``neuroverse3d-make-training-data``.
"""
