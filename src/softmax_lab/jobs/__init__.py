"""The train, eval and predict flows that src/train.py, eval.py and predict.py run; a job's outcome and exit code."""
