"""Where results go: the MLflow store and the run tree, the Tune callback that writes trials' runs,
the trials MLflow missed while its server was down, and the Ray results folder beside them."""
