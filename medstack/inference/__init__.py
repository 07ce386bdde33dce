"""Using a trained ensemble: the model bundle (``model.json``), its loader, the fused one-file model, prediction,
input-drift checks, Grad-CAM and the registry of ``<name>@<alias>`` names. Training, prediction and serving are
sibling stages; they meet in :func:`medstack.inference.bundle.load_bundle`.
"""
