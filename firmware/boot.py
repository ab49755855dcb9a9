# Runs first on every boot; main.py follows. Nothing here may fail.
import gc

gc.collect()
