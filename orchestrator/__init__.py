"""The harness: experiment specs, the command line, Ray Tune trials, Optuna search inside each
cell, MLflow tracking from the driver, and resuming after a crash (docs/ARCHITECTURE.md)."""
