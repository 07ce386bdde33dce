"""External validation: ``medstack evaluate`` and the ``medstack-evaluate`` flow score another site's labelled
images with a bundle's frozen decisions (the loader, decoding and scorer prediction uses) and write an evaluation
folder: metrics with bootstrap intervals beside the run's own test split, calibration, conformal coverage, referral
and the drift guard's summary; refitting on the new data only when ``--recalibrate`` asks for it.
"""
