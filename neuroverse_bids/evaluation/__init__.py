"""Model evaluation (``neuroverse3d-eval``): the paper's protocol on data already on the model
grid (:mod:`.protocol`), its tables and figure (:mod:`.report`) and the command (:mod:`.cli`)."""
