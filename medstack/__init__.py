"""medstack: stacking/voting ensembles of imbalance-aware CNNs for medical images, run as a Prefect DAG."""

__version__ = "0.1.0"
