import os

from training.distill import main

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
main()
