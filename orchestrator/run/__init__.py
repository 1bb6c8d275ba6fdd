"""Running a spec: Ray Tune with the cells' searcher (grids, Optuna, ASHA), the feature cache filled
first, one driver per experiment, a killed launch resumed by running it again."""
