"""The two data paths as straight functions on the model (backend.model.ClipClassifier) and explicit
collaborators: task -> prediction within /predict's deadline (predict.py), in the background
(preannotate.py), text search (search.py); annotation -> record (record.py) -> one training run
(training_run.py) of stages: reconcile (reconcile.py) -> train and select (train.py) -> rank (rank.py) ->
publish (publish.py) -> review (review.py)."""
