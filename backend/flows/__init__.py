"""The two data paths as straight functions: task -> prediction (predict.py, search.py) and
annotation -> record -> train -> rank -> push (record.py, train.py, publish.py)."""
