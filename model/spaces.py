"""Template spaces by TemplateFlow identifier, in one place.

A model records the space of its grid (metadata ``grid.template``); these are the two names the
code needs without a model at hand.
"""

#: the released weights' space, and the space of a model that records none
DEFAULT_TEMPLATE = "MNI152NLin2009cAsym"
#: the template served offline from nilearn's wheel (no download), the bundled model's space
OFFLINE_TEMPLATE = "MNI152NLin2009aSym"
